"""Cost of `atlas build --router-inputs LAYERS --router-input-dim D`: bytes on disk and build time.

    .venv/bin/python bench/bench_router_inputs.py [--tokens 400] [--max-lemmas 20] [--quick]

1. Bytes per (token, MoE layer) of the `router_inputs` column at DeepSeek-R1's shape (hidden size 7168, 58
   MoE layers), for D = 128, 256 and the full vector (D = 0), written by the atlas writer (zstd Parquet)
   into a routing shard with R1's routing columns; next to the raw float16 size D x 2 B and the rest of the
   routing row. The vectors are SYNTHETIC, hidden-state-like: Gaussian with a few large "massive activation"
   dimensions, so the float16 mantissas are as incompressible as real ones. Also the CPU time of the float64
   projection per (token, layer) at that shape (numpy matmul, this machine).
2. Build time with router inputs as a ratio of the same build without them: tiny-deepseek-v3 (RANDOM-INIT,
   hidden size 64, 5 MoE layers), `--max-lemmas N`, all MoE layers, D = 32 and D = 0; CPU time of the
   process (wall time on a shared machine is noise), one build each, after a warm-up build.

`--quick`: fewer tokens, the full vector on 4 layers only (its bytes per (token, layer) do not depend on the
layer count), a smaller build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

R1_HIDDEN, R1_MOE_LAYERS, R1_TOP_K, R1_EXPERTS = 7168, 58, 8, 256
DIMS = (128, 256, 0)
TOKENS_PER_TEXT = 20


def hidden_like(rng: np.random.Generator, n_tokens: int, n_layers: int) -> np.ndarray:
    """float32 `[T, n, H]` Gaussian vectors with a few large dimensions (as real hidden states have)."""
    x = rng.standard_normal((n_tokens, n_layers, R1_HIDDEN), dtype=np.float32)
    x[..., :4] *= 40.0
    return x


def shard_bytes(tmp: Path, n_tokens: int, n_layers: int, dim: int | None, seed: int) -> dict:
    """Bytes of the router_inputs column chunks (and of the whole file) of one synthetic R1-shaped shard."""
    import pyarrow.parquet as pq

    from atlas_build.atlas.projection import RouterInputProjection
    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN, routing_schema
    from atlas_build.atlas.writer import write_parquet_atomic

    rng = np.random.default_rng(seed)
    texts = n_tokens // TOKENS_PER_TEXT
    n_tokens = texts * TOKENS_PER_TEXT
    experts = np.argsort(rng.random((n_tokens, R1_MOE_LAYERS, R1_EXPERTS)), axis=-1)[..., :R1_TOP_K]
    weights = np.sort(rng.random((n_tokens, R1_MOE_LAYERS, R1_TOP_K), dtype=np.float32), axis=-1)[..., ::-1]
    vectors, seconds, stored_dim = None, 0.0, None
    if dim is not None:
        projection = RouterInputProjection(seed, R1_HIDDEN, dim)
        x = hidden_like(rng, n_tokens, n_layers)
        started = time.process_time()
        vectors = projection.project(x).astype(np.float32)
        seconds = time.process_time() - started
        stored_dim = projection.dim
    schema = routing_schema(
        R1_EXPERTS,
        R1_MOE_LAYERS,
        R1_TOP_K,
        "float16",
        None,
        n_layers if dim is not None else None,
        stored_dim,
    )
    table = routing_table(
        schema,
        source_ids=[f"text{i}" for i in range(texts)],
        corpus=["senses"] * texts,
        token_counts=np.full(texts, TOKENS_PER_TEXT),
        token_ids=rng.integers(0, 128_000, n_tokens),
        tokens=["w"] * n_tokens,
        char_spans=np.zeros((n_tokens, 2), np.int32),
        is_target=np.zeros(n_tokens, bool),
        experts=experts,
        weights=np.ascontiguousarray(weights),
        router_inputs=vectors,
    )
    path = tmp / f"routing-d{dim}-00000.parquet"
    written = write_parquet_atomic(table, path, schema)
    meta = pq.ParquetFile(path).metadata
    column_bytes = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            if group.column(c).path_in_schema.split(".")[0] == ROUTER_INPUTS_COLUMN:
                column_bytes += group.column(c).total_compressed_size
    return {
        "tokens": n_tokens,
        "file_bytes": written.bytes,
        "column_bytes": column_bytes,
        "project_seconds": seconds,
        "dim": stored_dim,
    }


def build_seconds(out: Path, max_lemmas: int, router_inputs: str | None, dim: int | None) -> float:
    import torch

    from atlas_build.builder import BuildConfig, run_build

    torch.set_num_threads(1)
    started = time.process_time()
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3",
            out=out,
            max_lemmas=max_lemmas,
            progress=False,
            router_inputs=router_inputs,
            router_input_dim=dim,
        ),
        log=lambda *_: None,
    )
    return time.process_time() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--max-lemmas", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="fewer tokens, full vectors on 4 layers, smaller build"
    )
    args = parser.parse_args(argv)
    tokens = 100 if args.quick else args.tokens
    lemmas = 6 if args.quick else args.max_lemmas
    print(
        f"bench_router_inputs: SYNTHETIC hidden-state-like vectors at R1's shape (hidden {R1_HIDDEN}, "
        f"{R1_MOE_LAYERS} MoE layers), atlas writer (zstd Parquet)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-router-inputs-") as tmp:
        base = shard_bytes(Path(tmp), tokens, R1_MOE_LAYERS, None, args.seed)
        cells = base["tokens"] * R1_MOE_LAYERS
        print(f"  routing row without router inputs: {base['file_bytes'] / cells:.1f} B per (token, layer)")
        for dim in DIMS:
            layers = 4 if (args.quick and dim == 0) else R1_MOE_LAYERS
            got = shard_bytes(Path(tmp), tokens, layers, dim, args.seed)
            per = got["column_bytes"] / (got["tokens"] * layers)
            name = "full (D = 0)" if dim == 0 else f"D = {dim}"
            project = (
                f"; projection {1e6 * got['project_seconds'] / (got['tokens'] * layers):.1f} us CPU per (token, layer)"
                if dim
                else ""
            )
            print(
                f"  {name}: {per:,.0f} B per (token, layer) on disk (raw float16 {got['dim'] * 2:,} B), "
                f"{per / (base['file_bytes'] / cells):.0f}x the routing row{project}"
            )
        print(
            f"  build time, tiny-deepseek-v3 (RANDOM-INIT, hidden 64, 5 MoE layers), --max-lemmas {lemmas}, CPU time:"
        )
        build_seconds(Path(tmp) / "warm", lemmas, None, None)
        plain = build_seconds(Path(tmp) / "plain", lemmas, None, None)
        print(f"    without router inputs: {plain:.2f} s")
        for dim in (32, 0):
            seconds = build_seconds(Path(tmp) / f"d{dim}", lemmas, "all", dim)
            print(
                f"    --router-inputs all --router-input-dim {dim}: {seconds:.2f} s = {seconds / plain:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
