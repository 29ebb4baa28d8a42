"""Extra bytes of `atlas build --scores M` per (token, MoE layer), at DeepSeek-R1's routing shape.

    .venv/bin/python bench/bench_scores.py [--tokens 5000]

Writes SYNTHETIC routing shards (58 MoE layers x top-8 of 256 experts, uint8 ids, float16 weights) with the
atlas writer, without score columns and with M = 16 and M = 32, and prints the on-disk (zstd Parquet)
difference per (token, layer) next to the raw Arrow size M x (1 B id + 4 B float32 score). The scores are
R1-like: sigmoid of standard-normal logits plus a small correction bias, sorted, so the float32 mantissas
are as incompressible as real ones; the expert ids are the top-M of those scores. Numbers measure storage,
not routing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K = 256, 58, 8
SIZES = (16, 32)


def shard_bytes(tmp: Path, n_tokens: int, scores_top_m: int | None, seed: int) -> tuple[int, int]:
    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.atlas.writer import write_parquet_atomic

    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_tokens, R1_MOE_LAYERS, R1_EXPERTS), dtype=np.float32)
    bias = (rng.standard_normal(R1_EXPERTS) * 0.05).astype(np.float32)
    choice = 1 / (1 + np.exp(-logits)) + bias
    best = np.argpartition(-choice, max(SIZES), axis=-1)[..., : max(SIZES)]
    top = np.take_along_axis(choice, best, axis=-1)
    within = np.argsort(-top, axis=-1, kind="stable")
    order, top = np.take_along_axis(best, within, axis=-1), np.take_along_axis(top, within, axis=-1)
    weights = top[..., :R1_TOP_K] / top[..., :R1_TOP_K].sum(-1, keepdims=True) * 2.5
    schema = routing_schema(R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K, "float16", scores_top_m)
    texts = n_tokens // 20
    table = routing_table(
        schema,
        source_ids=[f"text{i}" for i in range(texts)],
        corpus=["senses"] * texts,
        token_counts=np.full(texts, 20),
        token_ids=rng.integers(0, 128_000, texts * 20),
        tokens=["w"] * (texts * 20),
        char_spans=np.zeros((texts * 20, 2), np.int32),
        is_target=np.zeros(texts * 20, bool),
        experts=order[: texts * 20, :, :R1_TOP_K],
        weights=weights[: texts * 20],
        score_experts=order[: texts * 20, :, :scores_top_m] if scores_top_m else None,
        scores=top[: texts * 20, :, :scores_top_m] if scores_top_m else None,
    )
    path = tmp / f"routing-m{scores_top_m or 0}-00000.parquet"
    return write_parquet_atomic(table, path, schema).bytes, texts * 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scores-") as tmp:
        base, n = shard_bytes(Path(tmp), args.tokens, None, args.seed)
        cells = n * R1_MOE_LAYERS
        print("bench_scores: SYNTHETIC R1-shaped routing (58 MoE layers x top-8 of 256), atlas writer (zstd)")
        print(f"  without scores: {base / cells:.2f} B per (token, layer)")
        for m in SIZES:
            size, _ = shard_bytes(Path(tmp), args.tokens, m, args.seed)
            extra = (size - base) / cells
            print(
                f"  --scores {m}: +{extra:.1f} B per (token, layer) on disk "
                f"(raw Arrow {m * 5} B = {m} x (1 B id + 4 B float32)); {size / base:.2f}x the routing bytes"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
