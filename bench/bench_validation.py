"""Benchmark `atlas validate` on a SYNTHETIC atlas at DeepSeek-R1's routing shape.

    .venv/bin/python bench/bench_validation.py [--rows 1000000] [--keep DIR]

A generator writes a SYNTHETIC atlas in the atlas schema (senses + models + one routing config of `--rows`
token rows, 58 MoE layers x top-8 of 256 experts, float16 weights normalised to R1's routed_scaling_factor
2.5), in text-aligned chunks straight to Parquet shards, so it never holds the whole routing in memory.
Its models row says `model_id="synthetic"`, `random_init=True`: the routing is uniformly random and measures
speed only. A child process then runs the full validation (every check, sha256 of every file; the
tokenizer check is off: the synthetic tokenizer is a whitespace split) and reports its wall time, token rows
per second, bytes per second and peak RSS (with the RSS after imports, before reading the atlas).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLUG = "synthetic-deepseek-r1-shape"
WORDS_PER_TEXT = 16  # ~ a WordNet example sentence in tokens
TEXTS_PER_CHUNK = 4096  # 65536 rows: one Parquet row group
CHUNKS_PER_SHARD = 4


def _senses(n_texts: int):
    import pyarrow as pa

    from atlas_build.atlas.schema import SENSES_SCHEMA

    rows = []
    for t in range(n_texts):
        lemma = f"lemma{t // 6:06d}"
        sense = (t // 3) % 2 + 1
        before = " ".join(f"w{(t * 7 + j * 13) % 5003}" for j in range(7))
        after = " ".join(f"w{(t * 11 + j * 17) % 5003}" for j in range(WORDS_PER_TEXT - 8))
        text = f"{before} {lemma} {after}"
        start = len(before) + 1
        rows.append(
            {
                "example_id": f"{lemma}.n|{lemma}.n.{sense:02d}|{t % 3}",
                "lemma": lemma,
                "pos": "n",
                "synset": f"{lemma}.n.{sense:02d}",
                "sense_key": f"{lemma}%1:00:{sense:02d}::",
                "sense_number": sense,
                "lemma_n_senses": 2,
                "lexname": "noun.artifact",
                "gloss": f"synthetic sense {sense} of {lemma}",
                "text": text,
                "target_start": start,
                "target_end": start + len(lemma),
                "target_form": lemma,
                "source": "synthetic",
            }
        )
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


def _random_routing(rng: np.random.Generator, n: int, layers: int, n_experts: int, top_k: int, scale: float):
    """Uniformly random top-k sets (k distinct ids: a random start and a step coprime to N) and weights
    ordered highest first (reversed cumulative sums of positive draws), normalised to `scale`.

    The same distribution as `atlas_build.atlas.synthetic.random_routing`, in small integer types and
    without a sort, so generating a million DeepSeek-R1-shaped rows takes seconds, not minutes.
    """
    steps = np.array([s for s in range(1, n_experts) if np.gcd(s, n_experts) == 1] or [1], dtype=np.int32)
    start = rng.integers(0, n_experts, size=(n, layers, 1), dtype=np.int32)
    step = steps[rng.integers(0, len(steps), size=(n, layers, 1))]
    experts = (start + step * np.arange(top_k, dtype=np.int32)) % n_experts
    draws = rng.random((n, layers, top_k), dtype=np.float32) + np.float32(0.05)
    weights = np.cumsum(draws[:, :, ::-1], axis=2)[:, :, ::-1]
    weights *= np.float32(scale) / weights.sum(axis=2, keepdims=True)
    return experts, weights


def generate(root: Path, n_rows: int, n_layers: int, n_experts: int, top_k: int, seed: int) -> dict:
    """Write the SYNTHETIC atlas (`n_rows` rounded up to whole texts); returns its size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from atlas_build.atlas.layout import AtlasLayout
    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA, SENSES, SENSES_SCHEMA, routing_schema
    from atlas_build.atlas.store import write_config
    from atlas_build.atlas.synthetic import synthetic_models_row, tokenize_whitespace
    from atlas_build.atlas.writer import COMPRESSION, ROW_GROUP_ROWS, WrittenFile, sha256_file

    root.mkdir(parents=True, exist_ok=True)
    layout = AtlasLayout(root)
    manifest = Manifest()
    rng = np.random.default_rng(seed)
    n_texts = -(-n_rows // WORDS_PER_TEXT)
    senses = _senses(n_texts)
    write_config(root, manifest, SENSES, senses, SENSES_SCHEMA)
    model = synthetic_models_row(n_experts, n_layers, top_k, slug=SLUG, first_moe_layer=3)
    model.update(
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        n_shared_experts=1,
    )
    write_config(root, manifest, MODELS, pa.Table.from_pylist([model], schema=MODELS_SCHEMA), MODELS_SCHEMA)
    schema = routing_schema(n_experts, n_layers, top_k, model["weights_dtype"])
    config = f"routing-{SLUG}"
    writer, shard, rows_in_shard, written = None, 0, 0, 0
    texts = senses.column("text").to_pylist()
    ids = senses.column("example_id").to_pylist()
    t_start = senses.column("target_start").to_numpy()
    t_end = senses.column("target_end").to_numpy()

    def close(writer, shard, rows):
        writer.close()
        path = layout.shard_path(config, shard)
        manifest.record(root, config, WrittenFile(path, sha256_file(path), rows, path.stat().st_size))

    for first in range(0, n_texts, TEXTS_PER_CHUNK):
        chunk = slice(first, min(first + TEXTS_PER_CHUNK, n_texts))
        counts, tokens, spans = tokenize_whitespace(texts[chunk])
        starts, ends = np.repeat(t_start[chunk], counts), np.repeat(t_end[chunk], counts)
        experts, weights = _random_routing(rng, len(tokens), n_layers, n_experts, top_k, scale=2.5)
        table = routing_table(
            schema,
            source_ids=ids[chunk],
            corpus=[SENSES] * len(counts),
            token_counts=counts,
            token_ids=np.array([int(t[1:]) if t[1:].isdigit() else 5003 for t in tokens]),
            tokens=tokens,
            char_spans=spans,
            is_target=(spans[:, 0] < ends) & (spans[:, 1] > starts),
            experts=experts,
            weights=weights,
        )
        del experts, weights
        if writer is None:
            layout.config_dir(config).mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(layout.shard_path(config, shard), schema, compression=COMPRESSION)
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        rows_in_shard += table.num_rows
        written += table.num_rows
        if (first // TEXTS_PER_CHUNK + 1) % CHUNKS_PER_SHARD == 0:
            close(writer, shard, rows_in_shard)
            writer, shard, rows_in_shard = None, shard + 1, 0
    if writer is not None:
        close(writer, shard, rows_in_shard)
    manifest.corpus_counts = {"synthetic": True, "examples": n_texts}
    manifest.builds.append({"kind": "synthetic", "summary": "bench_validation: uniformly random routing"})
    manifest.save(root)
    data_bytes = sum(entry["bytes"] for entry in manifest.files.values())
    return {"rows": written, "texts": n_texts, "bytes": data_bytes, "files": len(manifest.files)}


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
    fork and exec, so a child would report the generator's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def validate_child(root: Path, batch_rows: int | None) -> None:
    """Runs in the child process: validate and print one JSON line."""
    from validation import run_validation
    from validation.gxrun import GXRunner
    from validation.rules import BATCH_ROWS

    GXRunner()  # import great-expectations before the baseline
    baseline = _peak_rss_kib()
    started = time.perf_counter()
    report = run_validation(root, tokenizers=False, batch_rows=batch_rows or BATCH_ROWS)
    seconds = time.perf_counter() - started
    peak = _peak_rss_kib()
    failures = [f"{r.config}:{r.check}" for r in report.failures]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": report.rows,
                "passed": report.passed,
                "failures": failures,
                "baseline_rss_kib": baseline,
                "peak_rss_kib": peak,
                "batch_rows": batch_rows or BATCH_ROWS,
            }
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="routing token rows")
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument(
        "--batch-rows", type=int, default=None, help="rows per Parquet batch [validation's default]"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the atlas here and keep it")
    parser.add_argument("--validate-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.validate_only is not None:
        validate_child(args.validate_only, args.batch_rows)
        return 0

    tmp = None
    root = args.keep
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-validation-"))
        root = tmp / "atlas"
    try:
        started = time.perf_counter()
        if (root / "manifest.json").exists():
            from atlas_build.atlas.manifest import Manifest

            files = Manifest.load(root).files
            size = {"rows": None, "bytes": sum(e["bytes"] for e in files.values()), "files": len(files)}
            print(f"bench_validation: reusing {root}")
        else:
            size = generate(root, args.rows, args.layers, args.experts, args.top_k, args.seed)
        generate_s = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, __file__, "--validate-only", str(root)]
            + (["--batch-rows", str(args.batch_rows)] if args.batch_rows else []),
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            print(child.stderr[-4000:], file=sys.stderr)
            return 1
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    routing = sum(v for k, v in result["rows"].items() if k.startswith("routing-"))
    seconds = result["seconds"]
    print("bench_validation: SYNTHETIC atlas (uniformly random routing; speed only, not findings)")
    print(
        f"  shape: {args.layers} MoE layers x top-{args.top_k} of {args.experts} experts, float16 weights; "
        f"{routing:,} routing rows, {size['files']} files, {size['bytes'] / 2**20:,.0f} MiB on disk"
    )
    print(f"  generate:             {generate_s:8.1f} s")
    print(f"  batch: {result['batch_rows']:,} rows")
    print(f"  validate (all checks, sha256 included, tokenizer check off): {seconds:8.1f} s")
    print(
        f"  throughput:           {routing / seconds:12,.0f} routing rows/s, "
        f"{size['bytes'] / 2**20 / seconds:,.1f} MiB/s"
    )
    print(
        f"  peak RSS (validation process): {result['peak_rss_kib'] / 2**10:,.0f} MiB "
        f"(after imports: {result['baseline_rss_kib'] / 2**10:,.0f} MiB)"
    )
    print(f"  gate: {'PASSED' if result['passed'] else 'FAILED ' + ', '.join(result['failures'])}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
