"""What the routing weights' Parquet encoding costs, and which readers read it.

    .venv/bin/python bench/bench_encoding.py [--tokens 20000]

A routing table of DeepSeek-R1's shape (58 MoE layers x top-8 of 256; uniformly random distinct ids,
the worst case for compression; float16 gate weights drawn from the tiny model's real weights, RANDOM-INIT,
renormalised to R1's sum 2.5), written with the writer's settings and with the weights column
  - dictionary-encoded (what atlas/writer.py writes),
  - PLAIN,
  - BYTE_STREAM_SPLIT (smallest, but DuckDB refuses it on float16).
Prints bytes per routing entry (token x layer x k) of the weights column and of the whole file, the ratio
to the writer's, and whether pyarrow, polars and DuckDB read the file back with equal values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

WEIGHTS_LEAF = "weights.list.element.list.element"


def readers_agree(path: Path, table: pa.Table) -> dict[str, str]:
    """Reader -> "ok", "differs", the first line of its error, or "not installed"."""
    want = table.column("weights").combine_chunks().flatten().flatten().cast(pa.float32())
    out: dict[str, str] = {}
    got = pq.read_table(path).column("weights").combine_chunks().flatten().flatten().cast(pa.float32())
    out["pyarrow"] = "ok" if got.equals(want) else "differs"
    try:
        import polars as pl

        values = pl.read_parquet(path)["weights"].explode().explode().cast(pl.Float32).to_numpy()
        out["polars"] = "ok" if np.array_equal(values, want.to_numpy()) else "differs"
    except ImportError:
        out["polars"] = "not installed"
    except Exception as error:  # noqa: BLE001 - reported
        out["polars"] = str(error).splitlines()[0][:90]
    try:
        import duckdb

        rows = duckdb.sql(f"SELECT weights FROM read_parquet('{path}')").fetchall()
        values = np.array([w for (row,) in rows for layer in row for w in layer], np.float32)
        out["duckdb"] = "ok" if np.array_equal(values, want.to_numpy()) else "differs"
    except ImportError:
        out["duckdb"] = "not installed"
    except Exception as error:  # noqa: BLE001 - reported
        out["duckdb"] = str(error).splitlines()[0][:90]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from bench_build import (
        FALLBACK_TEXTS,
        R1_MOE_LAYERS,
        R1_TOP_K,
        column_bytes,
        r1_shaped_routing,
    )

    from atlas_build.atlas.routing import nested_fixed_list
    from atlas_build.atlas.writer import COMPRESSION, ROW_GROUP_ROWS, routing_encodings
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine("tiny-deepseek-v3")
    weight_values = engine.route(FALLBACK_TEXTS * 8).weights.reshape(-1).astype(np.float32)
    engine.close()
    n = args.tokens
    ids, weights = r1_shaped_routing(n, weight_values, np.random.default_rng(0))
    experts = nested_fixed_list(ids.astype(np.uint8), pa.uint8())
    table = pa.table(
        {"experts": experts, "weights": nested_fixed_list(weights.astype(np.float16), pa.float16())}
    )
    writer = routing_encodings(pa.schema([]))
    variants = {
        "dictionary (writer.py)": writer,
        "PLAIN": {"use_dictionary": ["experts.list.element.list.element"]},
        "BYTE_STREAM_SPLIT": {
            "use_dictionary": ["experts.list.element.list.element"],
            "use_byte_stream_split": [WEIGHTS_LEAF],
        },
    }
    entries = n * R1_MOE_LAYERS * R1_TOP_K
    print(f"bench_encoding: R1 shape, {n} tokens x {R1_MOE_LAYERS} x top-{R1_TOP_K}, zstd; bytes per entry")
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in variants.items():
            path = Path(tmp) / f"{len(sizes)}.parquet"
            pq.write_table(table, path, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS, **extra)
            sizes[label] = column_bytes(path)["weights"] / entries
            readers = readers_agree(path, table)
            print(
                f"  {label:<20} weights {sizes[label]:.3f} B/entry ({sizes[label] / sizes['dictionary (writer.py)']:.3f}x "
                f"writer.py); file {path.stat().st_size / entries:.3f} B/entry; readers: "
                + ", ".join(f"{name} {state}" for name, state in readers.items())
            )
    cost = sizes["dictionary (writer.py)"] - sizes["BYTE_STREAM_SPLIT"]
    print(f"  readable by all costs {cost:+.3f} B per entry of weights vs BYTE_STREAM_SPLIT")


if __name__ == "__main__":
    main()
