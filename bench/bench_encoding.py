"""What each Parquet layout of a routing config costs on disk and to read, at DeepSeek-R1's shape.

    .venv/bin/python bench/bench_encoding.py [--tokens 20000] [--repeats 3] [--quick]

The routing is captured from a RANDOM-INIT DeepSeek-V3 at R1's routing shape (58 MoE layers x top-8 of
256, its load balanced as DeepSeek-V3 trains it; bench/r1_routing.py) over WordNet texts, with its own
gate weights (float16) and top-16 selection scores (float32, `--scores 16`): whole routing files, every
per-token column included. Layouts:
  - before issue 28: a dictionary on every column, zstd at pyarrow's default level, 1 MiB pages;
  - writer.py: what atlas/writer.py writes now (`parquet_options`: per value type, see `column_encodings`);
  - variants of the writer's, one choice changed each (e.g. float16 weights BYTE_STREAM_SPLIT, which DuckDB
    refuses), to show what each choice buys.
Prints bytes per stored value of each routing column (ids and weights per (token, layer, k) entry, scores per
score), whole-file bytes per entry with and without the score columns, `xz -9` of the same ids (token-major
and layer-major) as the yardstick, the goals of issue 28, whether two writes are byte-identical, and for
pyarrow, pandas, polars, DuckDB and `datasets`: equal values, and read time as a ratio to before.
"""

from __future__ import annotations

import argparse
import lzma
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOAL_SCORES_B, GOAL_IDS_VS_XZ, GOAL_FILE_B = 2.2, 1.1, 1.35
ROUTING_COLUMNS = ("experts", "weights", "score_experts", "scores")


def leaf(column: str) -> str:
    return f"{column}.list.element.list.element"


def layouts(schema: pa.Schema) -> dict[str, dict]:
    """Layout name -> `pq.write_table` options."""
    from atlas_build.atlas.writer import ROW_GROUP_ROWS, parquet_options

    writer = parquet_options(schema)
    before = {
        "compression": "zstd",
        "row_group_size": ROW_GROUP_ROWS,
        "write_statistics": True,
        "store_schema": True,
        "use_dictionary": True,
    }
    present = set(schema.names)

    def changed(**options) -> dict:
        return {**writer, **options}

    out = {"before issue 28": before, "writer.py": writer}
    no_dict = [p for p in writer["use_dictionary"] if p != leaf("weights")]
    out["weights float16 BYTE_STREAM_SPLIT (DuckDB refuses)"] = changed(
        use_dictionary=no_dict, use_byte_stream_split=[*writer["use_byte_stream_split"], leaf("weights")]
    )
    if "scores" in present:
        out["scores dictionary (before)"] = changed(
            use_dictionary=[*writer["use_dictionary"], leaf("scores")], use_byte_stream_split=[]
        )
    ids = [leaf(c) for c in ("experts", "score_experts") if c in present]
    out["ids BYTE_STREAM_SPLIT"] = changed(
        use_dictionary=[p for p in writer["use_dictionary"] if p not in ids],
        use_byte_stream_split=[*writer["use_byte_stream_split"], *ids],
    )
    out["zstd 3, 1 MiB pages"] = changed(compression_level=3, data_page_size=1 << 20)
    out["zstd 19"] = changed(compression_level=19)
    out["row groups of 4x the rows"] = changed(row_group_size=4 * writer["row_group_size"])
    return out


def column_bytes(path: Path) -> dict[str, int]:
    meta = pq.ParquetFile(path).metadata
    out: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema.split(".")[0]
            out[name] = out.get(name, 0) + column.total_compressed_size
    return out


def r1_table(n_tokens: int, with_scores: bool) -> pa.Table:
    """A whole routing table of `n_tokens` captured tokens (per-token columns as a build writes them)."""
    from r1_routing import R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K, SCORES_TOP_M, r1_routing
    from transformers import AutoTokenizer

    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.models import builtin_checkpoint

    routing = r1_routing(n_tokens)
    tokenizer = AutoTokenizer.from_pretrained(builtin_checkpoint("tiny-deepseek-v3"))
    schema = routing_schema(
        R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K, "float16", SCORES_TOP_M if with_scores else None
    )
    n_texts = len(routing.token_counts)
    return routing_table(
        schema,
        source_ids=routing.source_ids.tolist(),
        corpus=["senses"] * n_texts,
        token_counts=routing.token_counts,
        token_ids=routing.token_ids.astype(np.int64),
        tokens=tokenizer.convert_ids_to_tokens(routing.token_ids.tolist()),
        char_spans=routing.char_spans,
        is_target=np.zeros(n_tokens, bool),
        experts=routing.experts,
        weights=routing.weights,
        score_experts=routing.score_experts if with_scores else None,
        scores=routing.scores if with_scores else None,
    )


def timed(read, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls of `read`, after one untimed call (imports, caches, page cache)."""
    times, value = [], read()
    for _ in range(repeats):
        started = time.perf_counter()
        value = read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def read_all(path: Path, want: pa.Table, repeats: int, cache: Path) -> dict[str, tuple[float, str]]:
    """Reader -> (median seconds to read the whole file, "ok" | "differs" | its error's first line)."""
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    want_rows = {name: want.column(name).to_pylist() for name in ROUTING_COLUMNS if name in want.column_names}
    readers = {
        "pyarrow": lambda: pq.read_table(path),
        "pandas": lambda: pd.read_parquet(path),
        "polars": lambda: pl.read_parquet(path),
        "DuckDB": lambda: duckdb.sql(f"SELECT * FROM read_parquet('{path}')").to_arrow_table(),
        "datasets": lambda: datasets.Dataset.from_parquet(
            str(path), cache_dir=str(cache), keep_in_memory=True
        ),
    }
    out = {}
    for name, read in readers.items():
        try:
            seconds, value = timed(read, repeats)
        except Exception as error:  # noqa: BLE001 - reported, not raised: a reader that fails is a finding
            out[name] = (float("nan"), str(error).splitlines()[0][:80])
            continue
        if name == "pandas":
            got = {c: [v.tolist() if hasattr(v, "tolist") else v for v in value[c]] for c in want_rows}
            got = {c: [[list(layer) for layer in row] for row in rows] for c, rows in got.items()}
        elif name == "polars":
            got = {c: value[c].to_list() for c in want_rows}
        elif name == "datasets":
            got = {c: value.data.table.column(c).to_pylist() for c in want_rows}
        else:
            got = {c: value.column(c).to_pylist() for c in want_rows}
        same = all(_equal(got[c], want_rows[c]) for c in want_rows)
        out[name] = (seconds, "ok" if same else "differs")
    return out


def _equal(got: list, want: list) -> bool:
    return np.array_equal(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64))


def xz_bytes(values: np.ndarray) -> int:
    return len(lzma.compress(np.ascontiguousarray(values).tobytes(), preset=9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=None, help="captured tokens (default: all 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="reads per reader and layout (median)")
    parser.add_argument(
        "--quick", action="store_true", help="4,000 tokens, 1 read each, reads of before and writer.py only"
    )
    args = parser.parse_args()
    from r1_routing import DEFAULT_TOKENS, R1_MOE_LAYERS, R1_TOP_K, load_entropy_bits, r1_routing

    n = args.tokens or (4000 if args.quick else DEFAULT_TOKENS)
    repeats = 1 if args.quick else args.repeats
    routing = r1_routing(n)
    entries = n * R1_MOE_LAYERS * R1_TOP_K
    xz = xz_bytes(routing.experts) / entries
    xz_layer_major = xz_bytes(routing.experts.transpose(1, 0, 2)) / entries
    print(
        f"bench_encoding: R1 shape, {n} tokens x {R1_MOE_LAYERS} MoE layers x top-{R1_TOP_K}, routing captured "
        f"from a RANDOM-INIT model (expert load entropy {load_entropy_bits(routing.experts):.2f} of 8 bits)"
    )
    print(f"  xz -9 of the ids: {xz:.3f} B/entry token-major, {xz_layer_major:.3f} layer-major")
    tables = {True: r1_table(n, True), False: r1_table(n, False)}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in layouts(tables[True].schema).items():
            row: dict = {}
            for with_scores, table in tables.items():
                opts = dict(options)
                present = set(table.schema.names)
                for key in ("use_dictionary", "use_byte_stream_split"):
                    if isinstance(opts.get(key), list):
                        opts[key] = [p for p in opts[key] if p.split(".")[0] in present]
                path = Path(tmp) / f"{len(results)}-{with_scores}.parquet"
                started = time.process_time()
                pq.write_table(table, path, **opts)
                write_s = time.process_time() - started
                again = path.with_suffix(".again")
                pq.write_table(table, again, **opts)
                row[with_scores] = {
                    "path": path,
                    "file": path.stat().st_size / entries,
                    "columns": column_bytes(path),
                    "deterministic": path.read_bytes() == again.read_bytes(),
                    "write_us_per_token": write_s / n * 1e6,
                }
            scored = row[True]
            cols = scored["columns"]
            scores_per_value = routing.scores.size
            row["ids"] = cols["experts"] / entries
            row["weights"] = cols["weights"] / entries
            row["scores"] = cols["scores"] / scores_per_value
            row["score_ids"] = cols["score_experts"] / scores_per_value
            timed_reads = not args.quick or label in ("before issue 28", "writer.py")
            row["readers"] = (
                read_all(scored["path"], tables[True], repeats, Path(tmp) / "cache") if timed_reads else {}
            )
            results[label] = row
            print(
                f"  {label:<52} ids {row['ids']:.3f} ({row['ids'] / xz:.2f}x xz) weights {row['weights']:.3f} "
                f"B/entry; scores {row['scores']:.3f}, score ids {row['score_ids']:.3f} B/score; whole file "
                f"{row[False]['file']:.3f} B/entry without scores, {scored['file']:.3f} with; write "
                f"{scored['write_us_per_token']:.0f} us/token"
                + ("" if scored["deterministic"] and row[False]["deterministic"] else "; NOT DETERMINISTIC")
            )
    before = results["before issue 28"]["readers"]
    print(
        "  read time of the whole file with scores, ratio to before issue 28 (values equal to the table's?):"
    )
    for label, row in results.items():
        if not row["readers"]:
            continue
        cells = []
        for reader, (seconds, state) in row["readers"].items():
            ratio = seconds / before[reader][0] if before[reader][0] == before[reader][0] else float("nan")
            cells.append(f"{reader} {ratio:.2f}x {state}")
        print(f"    {label:<52} " + ", ".join(cells))
    writer = results["writer.py"]
    print(
        f"  goals (issue 28): scores {writer['scores']:.3f} <= {GOAL_SCORES_B} B/score "
        f"{'met' if writer['scores'] <= GOAL_SCORES_B else 'NOT met'}; ids {writer['ids'] / xz:.3f}x xz -9 "
        f"<= {GOAL_IDS_VS_XZ} {'met' if writer['ids'] / xz <= GOAL_IDS_VS_XZ else 'NOT met'}; whole file "
        f"without scores {writer[False]['file']:.3f} <= {GOAL_FILE_B} B/entry "
        f"{'met' if writer[False]['file'] <= GOAL_FILE_B else 'NOT met'} (xz -9 of ids + float16 weights alone: "
        f"{xz + xz_bytes(routing.weights.astype(np.float16)) / entries:.3f})"
    )


if __name__ == "__main__":
    main()
