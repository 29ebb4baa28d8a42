"""SYNTHETIC atlases in the real schema, for tests and benchmarks (never published as findings).

Every atlas made here has one `models` row with `model_id="synthetic"` and `random_init=True`, and its
corpus rows carry `source="synthetic"`, so nothing made here can pass for real routing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_table
from atlas_build.atlas.schema import (
    MODELS,
    MODELS_SCHEMA,
    SENSE_PAIRS,
    SENSE_PAIRS_SCHEMA,
    SENSES,
    SENSES_SCHEMA,
    SUBSTITUTIONS,
    SUBSTITUTIONS_SCHEMA,
    routing_config_name,
    routing_schema,
)
from atlas_build.atlas.store import write_config

SYNTHETIC_SLUG = "synthetic-moe"


def synthetic_models_row(
    n_experts: int = 32,
    n_layers: int = 4,
    top_k: int = 4,
    slug: str = SYNTHETIC_SLUG,
    weights_dtype: str | None = "float16",
    first_moe_layer: int = 1,
) -> dict:
    return {
        "model_slug": slug,
        "model_id": "synthetic",
        "revision": None,
        "checkpoint_sha256": None,
        "architecture": "SyntheticMoE",
        "model_type": "synthetic",
        "router_adapter": "synthetic",
        "num_hidden_layers": n_layers + first_moe_layer,
        "moe_layers": list(range(first_moe_layer, first_moe_layer + n_layers)),
        "n_routed_experts": n_experts,
        "top_k": top_k,
        "n_shared_experts": 0,
        "scoring_func": "softmax",
        "topk_method": "greedy",
        "n_group": None,
        "topk_group": None,
        "norm_topk_prob": True,
        "routed_scaling_factor": 1.0,
        "total_params": 0,
        "active_params": 0,
        "dtype": "float32",
        "engine": "synthetic",
        "weights_dtype": weights_dtype,
        "tokenizer": "whitespace",
        "add_bos_token": False,
        "random_init": True,
        "seed": 0,
    }


def random_routing(
    rng: np.random.Generator, n_tokens: int, n_layers: int, n_experts: int, top_k: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random top-k sets: experts int `[n, L, k]` (distinct per row), weights float32 sorted desc.

    Memory stays O(n * L * k): k distinct ids come from a random start and a random step coprime to N.
    """
    start = rng.integers(0, n_experts, size=(n_tokens, n_layers, 1))
    steps = np.array([s for s in range(1, n_experts) if np.gcd(s, n_experts) == 1] or [1])
    step = steps[rng.integers(0, len(steps), size=(n_tokens, n_layers, 1))]
    experts = (start + step * np.arange(top_k)) % n_experts
    weights = rng.random((n_tokens, n_layers, top_k), dtype=np.float32) + 0.05
    weights = -np.sort(-weights, axis=-1)
    weights = weights / weights.sum(-1, keepdims=True) * scale
    return experts.astype(np.int64), weights.astype(np.float32)


def synthetic_senses(n_lemmas: int, senses_per_lemma: int = 2, examples_per_sense: int = 3) -> pa.Table:
    """Sense rows with texts 'w<i> ... lemma ... w<j>' and exact target spans."""
    rows = []
    for li in range(n_lemmas):
        lemma = f"lemma{li:05d}"
        for si in range(senses_per_lemma):
            synset = f"{lemma}.n.{si + 1:02d}"
            for ei in range(examples_per_sense):
                prefix = f"ctx{(li * 7 + si * 3 + ei) % 50} ctx{(si * 11 + ei) % 40} "
                text = f"{prefix}{lemma} ctx{(li + ei) % 30} end"
                rows.append(
                    {
                        "example_id": f"{lemma}.n|{synset}|{ei}",
                        "lemma": lemma,
                        "pos": "n",
                        "synset": synset,
                        "sense_key": f"{lemma}%1:00:{si:02d}::",
                        "sense_number": si + 1,
                        "lemma_n_senses": senses_per_lemma,
                        "lexname": "noun.artifact",
                        "gloss": f"synthetic sense {si + 1} of {lemma}",
                        "text": text,
                        "target_start": len(prefix),
                        "target_end": len(prefix) + len(lemma),
                        "target_form": lemma,
                        "source": "synthetic",
                    }
                )
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


def synthetic_pairs(senses: pa.Table) -> pa.Table:
    """All same-sense and as many different-sense pairs per lemma, balanced."""
    by_lemma: dict[str, list[dict]] = {}
    for row in senses.to_pylist():
        by_lemma.setdefault(row["lemma"], []).append(row)
    rows = []
    for lemma, examples in by_lemma.items():
        same, diff = [], []
        for i, a in enumerate(examples):
            for b in examples[i + 1 :]:
                (same if a["synset"] == b["synset"] else diff).append((a, b))
        n = min(len(same), len(diff))
        for j, (a, b) in enumerate(same[:n] + diff[:n]):
            rows.append(
                {
                    "pair_id": f"{lemma}.n|{j:03d}",
                    "lemma": lemma,
                    "pos": "n",
                    "example_a": a["example_id"],
                    "example_b": b["example_id"],
                    "synset_a": a["synset"],
                    "synset_b": b["synset"],
                    "same_sense": a["synset"] == b["synset"],
                }
            )
    return pa.Table.from_pylist(rows, schema=SENSE_PAIRS_SCHEMA)


def tokenize_whitespace(texts: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Whitespace 'tokenizer' for synthetic atlases: counts `[texts]`, tokens `[T]`, spans `[T, 2]`."""
    counts, tokens, spans = [], [], []
    for text in texts:
        pos = 0
        n = 0
        for word in text.split(" "):
            start = text.index(word, pos)
            tokens.append(word)
            spans.append((start, start + len(word)))
            pos = start + len(word)
            n += 1
        counts.append(n)
    return np.array(counts, dtype=np.int64), tokens, np.array(spans, dtype=np.int32).reshape(-1, 2)


def write_synthetic_data(
    root: Path,
    n_lemmas: int = 20,
    senses_per_lemma: int = 2,
    examples_per_sense: int = 3,
    n_experts: int = 32,
    n_layers: int = 4,
    top_k: int = 4,
    seed: int = 0,
    routing_fn=None,
) -> Path:
    """Write a complete SYNTHETIC atlas (senses, sense-pairs, substitutions (empty), models, routing) and its
    manifest. The card is the caller's (`dataset_cards.render.write_card`): the ground floor writes no card.

    `routing_fn(senses: pa.Table, counts, spans, is_target, rng) -> (experts [T,L,k], weights [T,L,k])`
    lets a test plant an effect; the default is `random_routing`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    senses = synthetic_senses(n_lemmas, senses_per_lemma, examples_per_sense)
    pairs = synthetic_pairs(senses)
    model = synthetic_models_row(n_experts, n_layers, top_k)
    counts, tokens, spans = tokenize_whitespace(senses.column("text").to_pylist())
    starts = np.repeat(senses.column("target_start").to_numpy(), counts)
    ends = np.repeat(senses.column("target_end").to_numpy(), counts)
    is_target = (spans[:, 0] < ends) & (spans[:, 1] > starts)
    if routing_fn is None:
        experts, weights = random_routing(rng, len(tokens), n_layers, n_experts, top_k)
    else:
        experts, weights = routing_fn(senses, counts, spans, is_target, rng)
    schema = routing_schema(n_experts, n_layers, top_k, model["weights_dtype"])
    routing = routing_table(
        schema,
        source_ids=senses.column("example_id").to_pylist(),
        corpus=[SENSES] * senses.num_rows,
        token_counts=counts,
        token_ids=_stable_ids(tokens),
        tokens=tokens,
        char_spans=spans,
        is_target=is_target,
        experts=experts,
        weights=weights,
    )
    manifest = Manifest()
    write_config(root, manifest, SENSES, senses, SENSES_SCHEMA)
    write_config(root, manifest, SENSE_PAIRS, pairs, SENSE_PAIRS_SCHEMA)
    write_config(root, manifest, SUBSTITUTIONS, SUBSTITUTIONS_SCHEMA.empty_table(), SUBSTITUTIONS_SCHEMA)
    write_config(root, manifest, MODELS, pa.Table.from_pylist([model], schema=MODELS_SCHEMA), MODELS_SCHEMA)
    write_config(root, manifest, routing_config_name(model["model_slug"]), routing, schema)
    manifest.corpus_counts = {"synthetic": True, "lemmas": n_lemmas, "examples": senses.num_rows}
    manifest.builds.append(
        {"kind": "synthetic", "summary": f"synthetic atlas, seed {seed} (not real routing)"}
    )
    manifest.save(root)
    return root


def _stable_ids(tokens: list[str]) -> np.ndarray:
    vocab: dict[str, int] = {}
    return np.array([vocab.setdefault(t, len(vocab)) for t in tokens], dtype=np.int64)
