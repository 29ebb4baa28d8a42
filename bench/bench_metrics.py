"""Benchmark the token-scaled metrics on a SYNTHETIC atlas at DeepSeek-R1's routing shape.

    .venv/bin/python bench/bench_metrics.py [--tokens 1000000] [--keep DIR] [--quick]

A generator subprocess writes a SYNTHETIC atlas in the atlas schema (58 MoE layers x top-8 of 256 experts by
default), in text-aligned chunks straight to Parquet shards, so it never holds the whole routing in memory.
A second, fresh subprocess reads it through `datasets.load_dataset` (timed apart: the one-off Arrow cache
build) and runs, as `atlas metrics` does, the per-layer metrics that scale with tokens (load / entropy /
co-activation / token-id specialisation, in forked workers) concurrently with the sense-pair overlap (κ at
the targets, cluster bootstrap, within-lemma permutation test, and the named controls: context words, token
identity and all at once, in float64) and the router-aware uniform baseline simulation. It prints routing
entries per second (tokens x layers x k over the metrics' wall time), their CPU time, the load average (the
cores may be shared) and peak RSS of each process, and what the exact-reads check (the loaded rows against
manifest.json's fingerprints, `atlas_build.atlas.rows`) costs as a share of the metrics time. The routing is uniformly random: the numbers measure
speed, not routing."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLUG = "synthetic-deepseek-r1-shape"
TARGET_RATE = 20e6  # routing entries per second on 2 cores
SENSES_PER_LEMMA, EXAMPLES_PER_SENSE = 2, 3


# ---- generation (runs in a subprocess) ---------------------------------------------------------------------


def _texts(rng: np.random.Generator, n_texts: int, words_per_text: int, vocab: int):
    """Context word ids (Zipf-like over `vocab`) and the target position of every text."""
    ranks = rng.zipf(1.2, size=(n_texts, words_per_text - 1)) - 1
    words = (ranks % vocab).astype(np.int64)
    target_at = rng.integers(0, words_per_text, n_texts)
    return words, target_at


def generate(
    root: Path, n_tokens: int, n_layers: int, n_experts: int, top_k: int, words_per_text: int, seed: int
):
    from atlas_build.atlas.layout import AtlasLayout
    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import (
        MODELS,
        MODELS_SCHEMA,
        SENSE_PAIRS,
        SENSE_PAIRS_SCHEMA,
        SENSES,
        SENSES_SCHEMA,
        routing_config_name,
        routing_schema,
    )
    from atlas_build.atlas.store import write_config
    from atlas_build.atlas.synthetic import synthetic_models_row
    from atlas_build.atlas.writer import write_parquet_atomic
    from dataset_cards.render import write_card

    rng = np.random.default_rng(seed)
    per_lemma = SENSES_PER_LEMMA * EXAMPLES_PER_SENSE
    n_lemmas = max(1, n_tokens // words_per_text // per_lemma)
    n_texts = n_lemmas * per_lemma
    vocab = 32_000
    words, target_at = _texts(rng, n_texts, words_per_text, vocab)

    # Senses: example i belongs to lemma i // per_lemma, sense (i // EXAMPLES_PER_SENSE) % SENSES_PER_LEMMA.
    example = np.arange(n_texts)
    lemma = example // per_lemma
    sense = (example // EXAMPLES_PER_SENSE) % SENSES_PER_LEMMA
    lemma_names = np.char.add("lemma", lemma.astype(str))
    tokens_2d = np.char.add("w", words.astype(str)).astype(object)
    tokens_2d = np.insert(tokens_2d, 0, "", axis=1)  # placeholder column for the target, moved below
    # Put the lemma at its target position: shift the words before it left by one.
    col = np.arange(words_per_text)[None, :]
    src = np.where(col < target_at[:, None], col + 1, col)
    tokens_2d = np.take_along_axis(tokens_2d, src, axis=1)
    tokens_2d[example, target_at] = lemma_names
    lengths = np.vectorize(len)(tokens_2d)
    starts = np.cumsum(lengths + 1, axis=1) - lengths - 1
    texts = [" ".join(row) for row in tokens_2d]
    target_start = starts[example, target_at]
    synsets = np.char.add(np.char.add(lemma_names, ".n.0"), (sense + 1).astype(str))
    senses = pa.table(
        {
            "example_id": pa.array(
                np.char.add(np.char.add(synsets, "|"), (example % EXAMPLES_PER_SENSE).astype(str))
            ),
            "lemma": pa.array(lemma_names),
            "pos": pa.array(["n"] * n_texts),
            "synset": pa.array(synsets),
            "sense_key": pa.array(np.char.add(lemma_names, np.char.add("%1:00:0", sense.astype(str)))),
            "sense_number": pa.array((sense + 1).astype(np.int16)),
            "lemma_n_senses": pa.array(np.full(n_texts, SENSES_PER_LEMMA, np.int16)),
            "lexname": pa.array(["noun.artifact"] * n_texts),
            "gloss": pa.array(["synthetic sense"] * n_texts),
            "text": pa.array(texts),
            "target_start": pa.array(target_start.astype(np.int32)),
            "target_end": pa.array((target_start + np.char.str_len(lemma_names)).astype(np.int32)),
            "target_form": pa.array(lemma_names),
            "source": pa.array(["synthetic"] * n_texts),
        },
        schema=SENSES_SCHEMA,
    )
    # Pairs: within each lemma every same-sense pair and as many different-sense pairs.
    local_a, local_b = np.triu_indices(per_lemma, 1)
    same_local = (local_a // EXAMPLES_PER_SENSE) == (local_b // EXAMPLES_PER_SENSE)
    n_same = int(same_local.sum())
    pick = np.r_[np.flatnonzero(same_local), np.flatnonzero(~same_local)[:n_same]]
    la, lb, ls = local_a[pick], local_b[pick], same_local[pick]
    offsets = (np.arange(n_lemmas) * per_lemma)[:, None]
    ea, eb = (offsets + la).ravel(), (offsets + lb).ravel()
    ids = senses.column("example_id")
    pairs = pa.table(
        {
            "pair_id": pa.array(np.char.add("p", np.arange(len(ea)).astype(str))),
            "lemma": pa.array(lemma_names[ea]),
            "pos": pa.array(["n"] * len(ea)),
            "example_a": ids.take(pa.array(ea)),
            "example_b": ids.take(pa.array(eb)),
            "synset_a": pa.array(synsets[ea]),
            "synset_b": pa.array(synsets[eb]),
            "same_sense": pa.array(np.tile(ls, n_lemmas)),
        },
        schema=SENSE_PAIRS_SCHEMA,
    )
    model = synthetic_models_row(n_experts, n_layers, top_k, slug=SLUG, weights_dtype=None, first_moe_layer=3)
    model["architecture"] = "SyntheticMoE (DeepSeek-R1 routing shape)"
    manifest = Manifest()
    write_config(root, manifest, SENSES, senses, SENSES_SCHEMA)
    write_config(root, manifest, SENSE_PAIRS, pairs, SENSE_PAIRS_SCHEMA)
    write_config(root, manifest, MODELS, pa.Table.from_pylist([model], schema=MODELS_SCHEMA), MODELS_SCHEMA)

    config = routing_config_name(SLUG)
    schema = routing_schema(n_experts, n_layers, top_k, None)
    layout = AtlasLayout(root)
    context_ids = np.take_along_axis(np.insert(words, 0, 0, axis=1), src, axis=1)
    token_ids = np.where(col == target_at[:, None], vocab + lemma[:, None], context_ids)
    steps = np.array([s for s in range(1, n_experts) if np.gcd(s, n_experts) == 1])
    chunk_texts = 1 << 13
    for shard, lo in enumerate(range(0, n_texts, chunk_texts)):
        hi = min(n_texts, lo + chunk_texts)
        t = (hi - lo) * words_per_text
        # k distinct uniformly random experts per token and layer: random start, random step coprime to N.
        start = rng.integers(0, n_experts, (t, n_layers, 1), dtype=np.int32)
        step = steps[rng.integers(0, len(steps), (t, n_layers, 1))].astype(np.int32)
        experts = (start + step * np.arange(top_k, dtype=np.int32)) % n_experts
        span_start = starts[lo:hi].ravel()
        table = routing_table(
            schema,
            source_ids=ids.slice(lo, hi - lo).to_pylist(),
            corpus=[SENSES] * (hi - lo),
            token_counts=np.full(hi - lo, words_per_text),
            token_ids=token_ids[lo:hi].ravel(),
            tokens=tokens_2d[lo:hi].ravel().tolist(),
            char_spans=np.stack([span_start, span_start + lengths[lo:hi].ravel()], axis=1),
            is_target=(col == target_at[lo:hi, None]).ravel(),
            experts=experts,
            weights=None,
        )
        written = write_parquet_atomic(table, layout.shard_path(config, shard), schema)
        manifest.record(root, config, written)
    manifest.corpus_counts = {"synthetic": True, "lemmas": n_lemmas, "examples": n_texts}
    manifest.builds.append(
        {"kind": "synthetic", "summary": "SYNTHETIC benchmark atlas (uniformly random routing)"}
    )
    manifest.save(root)
    write_card(root)


# ---- benchmark ---------------------------------------------------------------------------------------------


def peak_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its largest reaped child), GiB."""
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB on Linux


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the layer workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench(
    root: Path, cache_dir: Path, n_bootstrap: int, n_permutations: int, with_paths: bool = True
) -> dict:
    from atlas_build.atlas.schema import SENSE_PAIRS, SENSES
    from atlas_build.metrics.compute import sense_pair_metrics, uniform_baseline
    from atlas_build.metrics.estimators.identity import target_identity
    from atlas_build.metrics.estimators.overlap import select_targets, target_rows_table
    from atlas_build.metrics.estimators.senses import BootstrapOptions, load_sense_corpus, sense_pair_kappa
    from atlas_build.metrics.experts import blocks as ex
    from atlas_build.metrics.paths.compute import PathMetricsJob
    from atlas_build.metrics.provenance.source import AtlasSource

    t0 = time.perf_counter()
    src = AtlasSource(root, cache_dir=cache_dir)
    row = src.models()[0]
    routing = src.routing(row["model_slug"])
    senses, pairs = src.table(SENSES), src.table(SENSE_PAIRS)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_gib()
    n_experts, top_k, n_layers = row["n_routed_experts"], row["top_k"], len(row["moe_layers"])

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    # As `atlas metrics` does: the layer pass runs in forked workers while the sense pairs run here.
    job = ex.ExpertPassJob(
        routing, n_experts, n_layers, top_k, what=("load", "coactivation", "specialisation")
    )
    corpus = load_sense_corpus(senses, pairs)
    options = BootstrapOptions(n_resamples=n_bootstrap, n_permutations=n_permutations)
    # Routing paths across layers, as `atlas metrics` runs them: a forked worker beside the sense metrics.
    # The synthetic routing stores ids only (weights null); its first id stands in for a top-1 here, so
    # that the top-1 statistics are measured too (the ids are uniformly random either way).
    as_weighted = dict(row, weights_dtype="float16")
    if with_paths:
        path_job = PathMetricsJob(routing, as_weighted, corpus, options=options, target="last", min_count=5)
    targets = select_targets(target_rows_table(routing, SENSES), corpus.example_ids, "last", n_experts)
    kappa = sense_pair_kappa(targets, corpus, top_k, n_experts)
    identity = target_identity(routing, corpus.example_ids, corpus.form)
    sp = sense_pair_metrics(kappa, corpus, identity, row, options)
    uniform_baseline(row, routing.num_rows, 5, seed=6)
    sense_s = time.perf_counter() - t0
    if with_paths:
        path_job.result()
    paths_s = time.perf_counter() - t0
    ep = job.result()
    entropy = ex.normalised_entropy(ep.load)
    metric_s = time.perf_counter() - t0
    cpu_s = cpu_seconds() - cpu0
    verify = _time_rows_check(src, routing, row["model_slug"])
    entries = routing.num_rows * n_layers * top_k
    return {
        "tokens": routing.num_rows,
        "layers": n_layers,
        "top_k": top_k,
        "experts": n_experts,
        "entries": entries,
        "pairs": int(np.isfinite(kappa).all(axis=1).sum()),
        "lemmas": sp["n_lemmas"],
        "load_s": load_s,
        "sense_s": sense_s,
        "paths_s": paths_s if with_paths else None,
        "metric_s": metric_s,
        "rate": entries / metric_s,
        "cpu_s": cpu_s,
        "rss_loaded_gib": rss_loaded,
        "rss_workers_gib": peak_rss_gib(resource.RUSAGE_CHILDREN),
        "entropy_mean": float(entropy.mean()),
        "delta_layer_mean": {
            k: float(v) for k, v in sp["layer_mean"]["delta"].items() if k != "p_value_interval"
        },
        "controls": sorted(sp["controls"]),
        "rows_check": verify,
    }


def _time_rows_check(src, routing: pa.Table, slug: str) -> dict:
    """The exact-reads check (`atlas.rows.check_rows`) of the routing rows the metrics read, timed again
    alone: what proving that the rows loaded through datasets are the verified files' costs."""
    from atlas_build.atlas.rows import check_rows
    from atlas_build.atlas.schema import ROUTING_PREFIX

    config = ROUTING_PREFIX + slug
    entries = {rel: m for rel, m in src.manifest["files"].items() if m["config"] == config}
    t0 = time.perf_counter()
    how = check_rows(routing, config, entries, where="the bench's datasets cache", way_out="rerun the bench")
    seconds = time.perf_counter() - t0
    nbytes = sum(routing.column(name).nbytes for name in routing.column_names)
    return {"seconds": seconds, "bytes": nbytes, "columns": len(routing.column_names), "how": how}


def _run_child(args: list[str]) -> tuple[str, float, float]:
    """Run this script with `args` in a fresh process: (stdout, wall seconds, peak RSS GiB of that process)."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"bench_metrics: {' '.join(args[:2])} failed (exit {proc.returncode})")
    return out, time.perf_counter() - t0, usage.ru_maxrss / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--words-per-text", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the atlas here and keep it")
    parser.add_argument("--generate-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure-only", type=Path, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-paths", action="store_true", help="leave the routing-path metrics out")
    parser.add_argument(
        "--quick", action="store_true", help="R1's shape at 20,000 tokens, 100 resamples, 19 permutations"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.bootstrap, args.permutations = 20_000, 100, 19
    shape = (args.tokens, args.layers, args.experts, args.top_k, args.words_per_text, args.seed)
    if args.generate_only:
        generate(args.generate_only, *shape)
        return 0
    if args.measure_only:
        # A fresh process, so its peak RSS (and its workers') is the metrics' own.
        load_before = os.getloadavg()[0]
        r = bench(*args.measure_only, args.bootstrap, args.permutations, with_paths=not args.no_paths)
        r["load_before"] = load_before
        print(json.dumps(r))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    root = args.keep or work / "atlas"
    gen = "reused"
    try:
        if not (root / "manifest.json").exists():
            flags = [
                "--tokens",
                str(args.tokens),
                "--layers",
                str(args.layers),
                "--experts",
                str(args.experts),
            ]
            flags += [
                "--top-k",
                str(args.top_k),
                "--words-per-text",
                str(args.words_per_text),
                "--seed",
                str(args.seed),
            ]
            _, gen_s, gen_rss = _run_child(["--generate-only", str(root), *flags])
            gen = f"{gen_s:.1f} s, peak RSS {gen_rss:.2f} GiB"
        opts = ["--bootstrap", str(args.bootstrap), "--permutations", str(args.permutations)]
        opts += ["--no-paths"] if args.no_paths else []
        out, _, rss = _run_child(["--measure-only", str(root), str(work / "hf-cache"), *opts])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = json.loads(out.strip().splitlines()[-1])
    mean = r["delta_layer_mean"]
    busy = r["load_before"] > 1.5
    print("bench_metrics: SYNTHETIC atlas (uniformly random routing; speed only, not findings)")
    print(
        f"  shape: {r['tokens']:,} tokens x {r['layers']} MoE layers x top-{r['top_k']} of {r['experts']} experts"
        f" = {r['entries']:,} routing entries; {r['pairs']:,} sense pairs over {r['lemmas']:,} lemmas"
    )
    print(f"  generate (subprocess, Parquet shards in chunks): {gen}")
    print(f"  datasets.load_dataset (one-off Arrow cache build): {r['load_s']:.1f} s")
    print(
        f"  metrics: load / entropy / co-activation / token specialisation over {r['layers']} layers in forked "
        f"workers, concurrently with sense-pair κ + bootstrap ({args.bootstrap}) + permutations "
        f"({args.permutations}) + controls {', '.join(r['controls'])} (float64) + uniform-routing baseline in the "
        f"main process (done after {r['sense_s']:.1f} s)"
        + (
            f", and routing paths (transitions, diversity, sense entropy, sense-pair path agreement with "
            f"controls) in a forked worker of their own (done after {r['paths_s']:.1f} s)"
            if r["paths_s"] is not None
            else " (routing paths left out: --no-paths)"
        )
    )
    print(
        f"  metrics total: {r['metric_s']:.1f} s -> {r['rate'] / 1e6:.1f} M routing entries/s "
        f"(target >= {TARGET_RATE / 1e6:.0f} M/s: {'met' if r['rate'] >= TARGET_RATE else 'NOT met'})"
    )
    print(
        f"  CPU time of the metrics (main process + workers): {r['cpu_s']:.1f} s "
        f"({r['entries'] / r['cpu_s'] / 1e6:.1f} M entries per CPU-second); cores: {os.cpu_count()}; load average "
        f"before: {r['load_before']:.1f}" + (" -- other processes shared the cores" if busy else "")
    )
    print(
        f"  peak RSS: main process {rss:.2f} GiB (after loading {r['rss_loaded_gib']:.2f} GiB), "
        f"largest worker {r['rss_workers_gib']:.2f} GiB (both count the shared memory-mapped Arrow pages)"
    )
    check = r["rows_check"]
    print(
        f"  exact reads: the routing rows loaded ({check['columns']} columns, {check['bytes'] / 2**30:.2f} GiB of "
        f"Arrow data) checked against manifest.json's fingerprints in {check['seconds']:.2f} s "
        f"({check['bytes'] / max(check['seconds'], 1e-9) / 2**30:.2f} GiB/s) = "
        f"{check['seconds'] / r['metric_s']:.1%} of the metrics time (also inside the load time above)"
    )
    print(
        f"  sanity (random routing): mean entropy {r['entropy_mean']:.4f}, Δκ layer mean "
        f"{mean['estimate']:+.5f} [{mean['ci_low']:+.5f}, {mean['ci_high']:+.5f}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
