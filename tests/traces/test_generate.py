"""`HFEngine.generate`: routing captured token by token (KV cache) equals the prefill of the same ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_build.corpora.traces import TraceFormatter
from atlas_build.engines.hf import HFEngine, TextTooLongError

from .conftest import MODEL

NEW_TOKENS = 48


@pytest.fixture(scope="module")
def engine(one_thread):
    engine = HFEngine(MODEL)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompt(engine):
    head, _ = TraceFormatter(engine.tokenizer).generation_prompt("Is 91 prime? Wait, let me check.")
    return head


@pytest.fixture(scope="module")
def generated(engine, prompt):
    return engine.generate(prompt, NEW_TOKENS)


def prefill(engine, ids: np.ndarray):
    """Route exactly these token ids by one prefill (as `route` does, without re-tokenizing)."""
    for slot in engine._captured:
        slot.clear()
    base = getattr(engine._model, engine._model.base_model_prefix)
    with torch.inference_mode():
        base(input_ids=torch.from_numpy(ids).long()[None], use_cache=False)
    experts, weights = engine._collect(1, len(ids), len(engine._routers), engine.spec.top_k)
    return experts[0], weights[0]


def test_generation_routing_equals_prefill(engine, prompt, generated):
    text, routing = generated
    n_prompt = len(engine.encode([prompt])[0]["ids"])
    assert routing.n_tokens == len(routing.token_ids) == n_prompt + NEW_TOKENS  # no EOS from this model
    assert routing.experts.shape == (routing.n_tokens, len(engine._routers), engine.spec.top_k)
    experts, weights = prefill(engine, routing.token_ids)
    # Same expert sets for every token and layer (float32: no near-tie flips), same order, same weights.
    same_set = (np.sort(experts, -1) == np.sort(routing.experts, -1)).all(-1)
    assert same_set.all(), f"{(~same_set).sum()} of {same_set.size} (token, layer) expert sets differ"
    assert (experts == routing.experts).all()
    np.testing.assert_allclose(weights, routing.weights, atol=1e-5, rtol=0)
    # The prompt part is exactly what route() gives for the prompt text.
    routed = engine.route([prompt])
    assert (routed.experts == routing.experts[:n_prompt]).all()
    assert (routed.token_ids == routing.token_ids[:n_prompt]).all()


def test_text_and_spans(engine, prompt, generated):
    text, routing = generated
    n_prompt = len(engine.encode([prompt])[0]["ids"])
    new_ids = routing.token_ids[n_prompt:].tolist()
    assert text == engine.tokenizer.decode(
        new_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    full = prompt + text
    spans = routing.char_spans[n_prompt:]
    if (spans >= 0).any():  # exact offsets unless the bytes of a character are split across tokens
        for token_id, (start, end) in zip(new_ids, spans, strict=True):
            if start >= 0:
                assert full[start:end] == engine.tokenizer.decode([token_id])
    assert routing.tokens == engine.tokenizer.convert_ids_to_tokens(routing.token_ids.tolist())


def test_stop_token(engine, prompt, generated):
    _, routing = generated
    n_prompt = len(engine.encode([prompt])[0]["ids"])
    stop = int(routing.token_ids[n_prompt + 2])
    first = routing.token_ids[n_prompt : n_prompt + 3].tolist().index(stop)
    text, stopped = engine.generate(prompt, NEW_TOKENS, stop_token_ids=[stop])
    # Greedy: the same tokens up to the stop token, which is routed but not in the text.
    assert stopped.token_ids.tolist() == routing.token_ids[: n_prompt + first + 1].tolist()
    assert (stopped.experts == routing.experts[: n_prompt + first + 1]).all()
    assert text == engine.tokenizer.decode(stopped.token_ids[n_prompt:-1].tolist(), skip_special_tokens=False)


def test_context_limit(engine):
    full = "wait" + " wait" * (engine.max_length - 2)  # BOS + max_length - 1 words
    assert len(engine.encode([full])[0]["ids"]) == engine.max_length
    with pytest.raises(TextTooLongError, match="no room to generate"):
        engine.generate(full, 4)
