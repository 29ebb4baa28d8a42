"""vLLM against the hf engine, on a CUDA GPU: the check that verifies the vllm engine (`make test-vllm`).

Runs wherever vllm and a CUDA device are installed (vLLM's own environment, see docs/runbook.md) and skips
with the reason everywhere else, so the default `make test` collects and skips it. The built-in
checkpoint is materialized as `atlas model materialize tiny-deepseek-v3 DIR` writes it, both engines route
the same texts in float32 (env ATLAS_VLLM_TEST_DTYPE to change), and at least 99.9% of the
(token, MoE layer) expert sets must be identical. The vllm engine counts as verified only where this passed.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

DTYPE = os.environ.get("ATLAS_VLLM_TEST_DTYPE", "float32")
MIN_AGREEMENT = 0.999
TEXTS = [
    "The bank of the river was muddy after the rain.",
    "She deposited money at the bank before noon.",
    "He tried to bank the fire so it would last the night.",
    "fox",
    "A quick brown fox jumps over the lazy dog near the old bank of the river today.",
    "The pitcher filled the pitcher with lemonade and threw a curveball.",
    "Time flies like an arrow; fruit flies like a banana.",
    "They left the capital with little capital and a capital idea.",
] * 4


def _skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (it needs its own environment: pip install -r requirements/vllm.txt)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device: vLLM's routed-experts capture needs a GPU"
    return None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from click.testing import CliRunner

    from atlas_build.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "tiny-deepseek-v3"
    result = CliRunner().invoke(main, ["model", "materialize", "tiny-deepseek-v3", str(out)])
    assert result.exit_code == 0, result.output
    return out


def wordnet_texts(limit: int = 300) -> list[str]:
    """Sense examples of a few WordNet lemmas when WordNet is installed (the atlas's own texts)."""
    try:
        from atlas_build.corpora import build_wordnet_corpora

        tables = build_wordnet_corpora(max_lemmas=20, seed=0)
        return tables["senses"].column("text").to_pylist()[:limit]
    except Exception:
        return []


@pytest.mark.parametrize(
    "enforce_eager",
    [True, False],
    ids=["eager", "cuda-graphs"],  # production runs with CUDA graphs: that path must be checked too
)
def test_vllm_routes_the_same_expert_sets_as_hf(checkpoint, enforce_eager):
    from atlas_build.engines.hf import HFEngine
    from atlas_build.engines.vllm import VLLMEngine

    texts = TEXTS + wordnet_texts()
    hf = HFEngine(str(checkpoint), dtype=DTYPE, device="cuda", batch_size=32)
    want = hf.route(texts)
    hf.close()
    import torch

    torch.cuda.empty_cache()

    engine = VLLMEngine(
        str(checkpoint),
        dtype=DTYPE,
        gpu_memory_utilization=0.5,
        max_model_len=512,
        llm_kwargs={"enforce_eager": enforce_eager},
    )
    try:
        got = engine.route(texts)
    finally:
        engine.close()
    assert got.weights is None
    assert engine.provenance()["cuda_graphs"] is (not enforce_eager)
    np.testing.assert_array_equal(got.token_counts, want.token_counts)
    np.testing.assert_array_equal(got.token_ids, want.token_ids)
    same = (got.experts == np.sort(want.experts, axis=-1)).all(axis=-1)
    agreement = float(same.mean())
    worst_layer = int(np.argmin(same.mean(axis=0)))
    assert agreement >= MIN_AGREEMENT, (
        f"only {agreement:.4%} of {same.size} (token, layer) expert sets agree between vLLM and hf "
        f"({DTYPE}); worst MoE layer index {worst_layer}: {same.mean(axis=0)[worst_layer]:.4%}"
    )
