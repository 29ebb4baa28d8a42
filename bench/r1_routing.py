"""Routing at DeepSeek-R1's shape for the benches, captured from a model (RANDOM-INIT), not drawn from a formula.

Uniformly random ids (the benches' former generator) are the worst case for a compressor, and the
synthetic atlases' `random_routing` (a start and a step: 256 x 128 distinct ordered tuples per layer) is
far easier than real routing: neither says what a real atlas costs. This captures the routing of
transformers' own `DeepseekV3ForCausalLM` at R1's routing shape (3 dense then 58 MoE layers, top-8 of 256
routed experts in 8 groups, top-4 groups, sigmoid scores with `e_score_correction_bias`,
`routed_scaling_factor` 2.5), with the built-in tiny-deepseek-v3's small widths (hidden 64), over WordNet
texts tokenized with DeepSeek-R1's vocabulary:

- weights are seeded random (RANDOM-INIT, never trained), routers initialised as the built-in model's;
- the correction bias is then balanced as DeepSeek-V3 trains it (aux-loss-free load balancing: each step
  moves an overloaded expert's bias down and an underloaded one's up), on calibration texts, so expert
  load per layer is near uniform as R1's is (`BALANCE_STEPS`);
- ids, gate weights (float32, highest first) and the top-16 selection scores (float32) of every token.

Captured once per (generator version, token count) and kept under the routing-atlas cache
(`$ROUTING_ATLAS_CACHE/bench/`, default ~/.cache/routing-atlas/bench/). A capture of 20,000 tokens takes
about two CPU minutes.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

R1_DENSE_LAYERS, R1_MOE_LAYERS, R1_TOP_K, R1_EXPERTS = 3, 58, 8, 256
SCORES_TOP_M = 16
# Bump when the checkpoint, the balancing or the texts change: cached captures are then made again.
GENERATOR_VERSION = 1
SEED = 0
# Aux-loss-free balancing: BALANCE_STEPS passes over the calibration texts, bias step shrinking each pass.
BALANCE_STEPS, BALANCE_FIRST_STEP, BALANCE_DECAY = 10, 0.05, 0.7
CALIBRATION_TEXTS = 300
# The capture the benches share (one capture, one cache file).
DEFAULT_TOKENS = 20_000


@dataclass(frozen=True)
class R1Routing:
    """Captured routing of `n` tokens at R1's shape (RANDOM-INIT model).

    experts: uint8 `[n, 58, 8]`, highest gate weight first. weights: float32 `[n, 58, 8]`, summing to 2.5.
    score_experts: uint8 `[n, 58, 16]`, the 16 experts of highest selection score, highest first.
    scores: float32 `[n, 58, 16]`, those selection scores. token_counts: tokens per text (the last text may
    be cut to make `n`), source_ids: the texts' ids (str), token_ids int32 `[n]`, char_spans int32 `[n, 2]`.
    """

    experts: np.ndarray
    weights: np.ndarray
    score_experts: np.ndarray
    scores: np.ndarray
    token_counts: np.ndarray
    source_ids: np.ndarray
    token_ids: np.ndarray
    char_spans: np.ndarray


def r1_shape_checkpoint(out: Path) -> Path:
    """A seeded RANDOM-INIT DeepSeek-V3 checkpoint with R1's routing shape and the tiny model's widths."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from atlas_build.models import builtin_checkpoint
    from atlas_build.models.tiny_deepseek_v3 import CONFIG

    config = DeepseekV3Config(
        **{
            **CONFIG,
            "moe_intermediate_size": 8,  # the experts' width does not enter the routing of the next layer much
            "num_hidden_layers": R1_DENSE_LAYERS + R1_MOE_LAYERS,
            "first_k_dense_replace": R1_DENSE_LAYERS,
            "n_routed_experts": R1_EXPERTS,
            "num_experts_per_tok": R1_TOP_K,
            "n_group": 8,
            "topk_group": 4,
        }
    )
    torch.manual_seed(SEED)
    model = DeepseekV3ForCausalLM(config)
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for layer in model.model.layers[R1_DENSE_LAYERS:]:
            # As the built-in model: routers wider than HF's init (else noise decides), a non-zero bias.
            layer.mlp.gate.weight.normal_(0.0, 0.15, generator=generator)
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(R1_EXPERTS, generator=generator) * 0.05)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    source = builtin_checkpoint("tiny-deepseek-v3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, tmp / name)
    config_file = tmp / "config.json"
    data = json.loads(config_file.read_text())
    data.update(
        {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "routing_atlas": {"random_init": True}}
    )
    config_file.write_text(json.dumps(data, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def wordnet_texts() -> tuple[list[str], list[str]]:
    """Ids and texts of the WordNet example sentences, then of the substitutions, in id order."""
    from atlas_build.corpora import build_wordnet_corpora

    try:
        tables = build_wordnet_corpora(max_lemmas=600, seed=0)
    except Exception as error:  # noqa: BLE001 - the one way out is to install WordNet
        raise SystemExit(f"r1_routing needs WordNet 3.0 ({error}): run `make wordnet`") from error
    ids, texts = [], []
    for name, key in (("senses", "example_id"), ("substitutions", "substitution_id")):
        table = tables[name].sort_by(key)
        ids.extend(table.column(key).to_pylist())
        texts.extend(table.column("text").to_pylist())
    return ids, texts


def balance(engine, texts: list[str]) -> None:
    """DeepSeek-V3's aux-loss-free balancing of every router's `e_score_correction_bias`, in place."""
    import torch

    step = BALANCE_FIRST_STEP
    for _ in range(BALANCE_STEPS):
        experts = engine.route(texts).experts
        # The engine's router modules: a bench may reach in, it moves the bias as training would.
        for layer, (_, router) in enumerate(engine._routers):
            load = np.bincount(experts[:, layer].ravel(), minlength=R1_EXPERTS)
            router.e_score_correction_bias -= torch.from_numpy(step * np.sign(load - load.mean())).float()
        step *= BALANCE_DECAY


def capture(n_tokens: int) -> R1Routing:
    """Route WordNet texts through the balanced R1-shaped model until `n_tokens` tokens are captured."""
    import tempfile

    from atlas_build.engines.hf import HFEngine

    source_ids, texts = wordnet_texts()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = r1_shape_checkpoint(Path(tmp) / "r1-shape")
        engine = HFEngine(str(checkpoint), batch_size=64, random_init=False, scores_top_m=SCORES_TOP_M)
        balance(engine, texts[-CALIBRATION_TEXTS:])
        parts, total, start = [], 0, 0
        while total < n_tokens and start < len(texts):
            batch = engine.route(texts[start : start + 256])
            parts.append(batch)
            total += int(batch.token_counts.sum())
            start += 256
        engine.close()
    if total < n_tokens:
        raise SystemExit(f"r1_routing: the WordNet texts give {total} tokens, fewer than {n_tokens}")

    def joined(name: str, dtype) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in parts]).astype(dtype)

    routed = R1Routing(
        experts=joined("experts", np.uint8),
        weights=joined("weights", np.float32),
        score_experts=joined("score_experts", np.uint8),
        scores=joined("scores", np.float32),
        token_counts=joined("token_counts", np.int64),
        source_ids=np.array(source_ids[:start]),
        token_ids=joined("token_ids", np.int32),
        char_spans=joined("char_spans", np.int32),
    )
    return first_tokens(routed, n_tokens)


def r1_routing(n_tokens: int) -> R1Routing:
    """The captured routing of `n_tokens` tokens (from the cache when it was captured before): the first
    `n_tokens` of the shared `DEFAULT_TOKENS` capture when that many are enough."""
    from atlas_build.models import cache_root

    if n_tokens < DEFAULT_TOKENS:
        return first_tokens(r1_routing(DEFAULT_TOKENS), n_tokens)
    path = cache_root() / "bench" / f"r1-routing-g{GENERATOR_VERSION}-{n_tokens}.npz"
    if path.exists():
        with np.load(path) as data:
            return R1Routing(**{name: data[name] for name in R1Routing.__dataclass_fields__})
    print(f"  (capturing {n_tokens} tokens of RANDOM-INIT routing at R1's shape, once: {path})", flush=True)
    routing = capture(n_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **{name: getattr(routing, name) for name in R1Routing.__dataclass_fields__})
    tmp.replace(path)
    return routing


def first_tokens(routing: R1Routing, n_tokens: int) -> R1Routing:
    """The first `n_tokens` tokens of a capture (its last text cut to fit)."""
    cut = np.cumsum(routing.token_counts)
    keep = int(np.searchsorted(cut, n_tokens)) + 1
    counts = routing.token_counts[:keep].copy()
    counts[-1] -= int(cut[keep - 1] - n_tokens)
    per_token = {
        name: getattr(routing, name)[:n_tokens]
        for name in ("experts", "weights", "score_experts", "scores", "token_ids", "char_spans")
    }
    return R1Routing(**per_token, token_counts=counts, source_ids=routing.source_ids[:keep])


def load_entropy_bits(experts: np.ndarray) -> float:
    """Mean over layers of the plug-in entropy (bits) of expert load: 8 is perfectly balanced over 256."""
    out = []
    for layer in range(experts.shape[1]):
        p = np.bincount(experts[:, layer].ravel(), minlength=R1_EXPERTS) / experts[:, layer].size
        out.append(float(-(p[p > 0] * np.log2(p[p > 0])).sum()))
    return float(np.mean(out))


def replayed_routing(senses, counts, spans, is_target, rng) -> tuple[np.ndarray, np.ndarray]:
    """A `write_synthetic_data` `routing_fn` at R1's shape: the captured routing (`DEFAULT_TOKENS` of it), token
    for token, in place of the synthetic atlas's formula routing (the arguments other than `counts` unused)."""
    routing = r1_routing(DEFAULT_TOKENS)
    n = int(np.sum(counts))
    if n > len(routing.experts):
        raise SystemExit(f"r1_routing: {n} tokens asked for, {len(routing.experts)} captured")
    return routing.experts[:n].astype(np.int64), routing.weights[:n]
