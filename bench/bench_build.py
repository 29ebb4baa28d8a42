"""Benchmark the build: capture overhead, throughput, bytes per routing entry, atlas size at DeepSeek-R1's shape.

(Over 600 lines on purpose: one script, so that `make bench` and a GPU machine run every measurement in one
process with one set of inputs, which is what makes its ratios comparable.)

    .venv/bin/python bench/bench_build.py [--device cpu|cuda] [--max-lemmas 30] [--repeats 5] [--quick]

Everything is measured in this one run:

1. Capture overhead, on the built-in tiny-deepseek-v3 (RANDOM-INIT) and on a synthetic checkpoint of
   DeepSeek-V3's routing shape (256 experts, top-8, 8 groups, top-4 groups; few layers, small hidden):
   plain   = tokenize + the same padded batches through the same base model WITHOUT router hooks
             (a second copy of the checkpoint, loaded without the engine);
   capture = `engine.route` + `build.shard_table` + the atomic Parquet write of every shard.
   Both run over the same texts in shards of 128 texts, alternated shard by shard, `--repeats` times;
   per shard the median is taken (target: capture <= 1.05 x plain). On CPU, torch runs one thread and
   the clock is the process's CPU time (wall time on a shared machine is noise); on CUDA, wall time.
   tokens/s is over the capture time.
2. bfloat16 vs float32 expert-set agreement of the same engine on the same texts (both checkpoints).
3. At R1's shape (58 MoE layers x top-8 of 256): the CPU cost per token of what follows the forward
   pass (vLLM's arrays -> atlas ids; routing rows + Parquet write), and the bytes per routing entry
   (token x MoE layer x k) of routing captured from a RANDOM-INIT DeepSeek-V3 at R1's routing shape over
   WordNet texts, its expert load balanced as DeepSeek-V3 trains it (bench/r1_routing.py), with its own
   gate weights.
   Bytes come from the Parquet column chunks, written with the project's writer settings and with
   candidate encodings (targets: <= 2.0 B with float16 weights, <= 1.0 B ids only); each variant is
   written twice to check that its bytes are deterministic.
4. Expected atlas size for the full WordNet corpora at R1's shape: tokens measured with the built-in
   model's tokenizer (= DeepSeek-R1's vocabulary and BOS) x 58 x 8 x the bytes per entry of (3), plus the
   per-token columns measured on a real shard (`--quick` measures tokens on `--max-lemmas` lemmas only and
   scales by the text count of the full corpora).

`--device cuda` runs (1) and (2) on the GPU, with a wider synthetic checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

R1_MOE_LAYERS, R1_TOP_K, R1_EXPERTS = 58, 8, 256
OVERHEAD_TARGET = 1.05
BYTES_TARGET_WEIGHTS, BYTES_TARGET_IDS = 2.0, 1.0
# The full WordNet 3.0 corpora (senses + substitutions), for --quick scaling.
FULL_TEXTS = {"senses": 33885, "substitutions": 43153}
FALLBACK_TEXTS = [
    "The bank of the river was muddy after the rain.",
    "She deposited money at the bank before noon.",
    "He tried to bank the fire so it would last the night.",
    "A quick brown fox jumps over the lazy dog near the old bank of the river today.",
    "The pitcher filled the pitcher with lemonade and threw a curveball.",
    "Time flies like an arrow; fruit flies like a banana.",
]


# ---- texts ------------------------------------------------------------------------------------------------
def corpus_items(max_lemmas: int | None):
    """`TextItem`s of the WordNet corpora (senses, then substitutions, by id), and the tables."""
    from atlas_build.atlas.texts import TextItem
    from atlas_build.corpora import build_wordnet_corpora

    try:
        tables = build_wordnet_corpora(max_lemmas=max_lemmas, seed=0)
    except Exception as error:  # no WordNet: synthetic sentences, said so
        print(f"  (WordNet unavailable: {error}; using {len(FALLBACK_TEXTS) * 40} synthetic sentences)")
        return [TextItem(f"t{i}", "senses", t) for i, t in enumerate(FALLBACK_TEXTS * 40)], None
    items = []
    for name, key in (("senses", "example_id"), ("substitutions", "substitution_id")):
        table = tables[name].sort_by(key)
        rows = zip(
            table.column(key).to_pylist(),
            table.column("text").to_pylist(),
            table.column("target_start").to_pylist(),
            table.column("target_end").to_pylist(),
            strict=True,
        )
        items.extend(TextItem(i, name, text, s, e) for i, text, s, e in rows)
    return items, tables


# ---- checkpoints ------------------------------------------------------------------------------------------
def v3_shaped_checkpoint(out: Path, device: str) -> Path:
    """A seeded random checkpoint with DeepSeek-V3's routing shape (256 experts, top-8, 8/4 groups)."""
    import shutil

    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from atlas_build.models import builtin_checkpoint
    from atlas_build.models.tiny_deepseek_v3 import CONFIG

    wide = device == "cuda"
    config = DeepseekV3Config(
        **{
            **CONFIG,
            "hidden_size": 512 if wide else 64,
            "intermediate_size": 1024 if wide else 128,
            "moe_intermediate_size": 128 if wide else 16,
            "num_hidden_layers": 8 if wide else 4,
            "first_k_dense_replace": 1,
            "n_routed_experts": R1_EXPERTS,
            "num_experts_per_tok": R1_TOP_K,
            "n_group": 8,
            "topk_group": 4,
        }
    )
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers[config.first_k_dense_replace :]:
            # As the tiny model: routers wider than HF's init, a non-zero correction bias.
            layer.mlp.gate.weight.normal_(0.0, 0.15, generator=generator)
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(R1_EXPERTS, generator=generator) * 0.05)
    model.save_pretrained(out, safe_serialization=True)
    source = builtin_checkpoint("tiny-deepseek-v3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, out / name)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data.update(
        {"topk_method": "noaux_tc", "scoring_func": "sigmoid", "routing_atlas": {"random_init": True}}
    )
    config_file.write_text(json.dumps(data, indent=2))
    return out


# ---- 1. capture overhead ----------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def plain_forward(engine, base_model, texts: list[str], batch_size: int, device: str) -> int:
    """Tokenize and run the engine's own batches through `base_model` (no hooks); returns tokens."""
    import torch

    encoded = engine.encode(texts)
    lengths = np.array([len(e["ids"]) for e in encoded])
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch].max())
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.from_numpy(encoded[i]["ids"])
                mask[row, : lengths[i]] = 1
            base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return int(lengths.sum())


def capture_and_write(engine, shards, schema, out: Path) -> int:
    from atlas_build.atlas.writer import write_parquet_atomic
    from atlas_build.builder import shard_table

    tokens = 0
    for n, shard in enumerate(shards):
        table = shard_table(engine, shard, schema, True)
        write_parquet_atomic(table, out / f"shard-{n:05d}.parquet", schema)
        tokens += table.num_rows
    return tokens


def clock(device: str) -> float:
    """CPU: this process's CPU time (one torch thread, see `measure_overhead`), which other processes on a
    shared machine barely disturb; GPU: wall time after a synchronize."""
    sync(device)
    return time.perf_counter() if device == "cuda" else time.process_time()


def measure_overhead(label: str, model: str, items, device: str, repeats: int, texts_per_shard: int = 128):
    """Plain forward vs capture+write, alternated shard by shard, `repeats` times; per shard the median.

    On CPU torch runs on one thread and each step is timed in this process's CPU time (fsync waits
    excluded): on a machine shared with other work, wall time varies by 10x between identical runs, CPU
    time by a few percent.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from atlas_build.atlas.schema import routing_schema
    from atlas_build.engines.hf import HFEngine

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    engine = HFEngine(model, device=device, batch_size=16)
    # The plain forward: the same weights, loaded again without the engine, so no hook is attached.
    plain_model = AutoModelForCausalLM.from_pretrained(engine.path, dtype="float32").to(device).eval()
    base = getattr(plain_model, plain_model.base_model_prefix)
    spec = engine.spec
    schema = routing_schema(spec.n_routed_experts, len(spec.moe_layers), spec.top_k, "float16")
    shards = [items[i : i + texts_per_shard] for i in range(0, len(items), texts_per_shard)]
    plain_s = np.zeros((repeats, len(shards)))
    capture_s = np.zeros((repeats, len(shards)))
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up of both paths (allocator, kernels, first Parquet write).
        for _ in range(2):
            plain_forward(engine, base, [item.text for item in shards[0]], 16, device)
            capture_and_write(engine, [shards[0]], schema, Path(tmp))
        for r in range(repeats):
            for n, shard in enumerate(shards):
                texts = [item.text for item in shard]
                for path in ("plain", "capture") if (r + n) % 2 == 0 else ("capture", "plain"):
                    started = clock(device)
                    if path == "plain":
                        plain_forward(engine, base, texts, 16, device)
                    else:
                        count = capture_and_write(engine, [shard], schema, Path(tmp) / f"{n}")
                    (plain_s if path == "plain" else capture_s)[r, n] = clock(device) - started
                if r == 0:
                    tokens += count
    engine.close()
    del plain_model
    torch.set_num_threads(threads)
    plain, capture = np.median(plain_s, axis=0).sum(), np.median(capture_s, axis=0).sum()
    fastest = capture_s.min(axis=0).sum() / plain_s.min(axis=0).sum()
    result = {
        "model": label,
        "clock": "wall" if device == "cuda" else "process CPU time, 1 torch thread",
        "texts": len(items),
        "tokens": tokens,
        "shards": len(shards),
        "repeats": repeats,
        "plain_s": round(float(plain), 3),
        "capture_write_s": round(float(capture), 3),
        "overhead_ratio": round(float(capture / plain), 3),
        "overhead_ratio_fastest_runs": round(float(fastest), 3),
        "overhead_us_per_token": round(float((capture - plain) / tokens * 1e6), 2),
        "tokens_per_s": round(float(tokens / capture), 1),
    }
    verdict = "meets" if result["overhead_ratio"] <= OVERHEAD_TARGET else "MISSES"
    print(
        f"  {label}: {tokens} tokens, {len(shards)} shards x {repeats}; plain forward {plain:.3f} s, capture+write "
        f"{capture:.3f} s -> {result['overhead_ratio']:.3f}x ({verdict} the {OVERHEAD_TARGET}x target; fastest "
        f"runs {fastest:.3f}x), {result['overhead_us_per_token']:+.1f} us/token; {result['tokens_per_s']:,.0f} "
        f"tokens/s ({result['clock']})"
    )
    return result


# ---- 2. bf16 vs fp32 --------------------------------------------------------------------------------------
def dtype_agreement(label: str, model: str, texts: list[str], device: str) -> dict:
    from atlas_build.engines.hf import HFEngine

    routed = {}
    for dtype in ("float32", "bfloat16"):
        engine = HFEngine(model, device=device, dtype=dtype, batch_size=16)
        routed[dtype] = engine.route(texts).experts
        engine.close()
    same = np.sort(routed["float32"], -1) == np.sort(routed["bfloat16"], -1)
    result = {
        "model": label,
        "tokens": int(same.shape[0]),
        "same_expert_set": round(float(same.all(-1).mean()), 4),
        "same_expert_slots": round(float(same.mean()), 4),
        "same_top1": round(float((routed["float32"][..., 0] == routed["bfloat16"][..., 0]).mean()), 4),
    }
    print(
        f"  {label}: identical expert sets bf16 vs fp32 {result['same_expert_set']:.2%} of (token, layer); "
        f"same top-1 {result['same_top1']:.2%} ({result['tokens']} tokens, {device}, random-init routers)"
    )
    return result


# ---- 3. bytes per entry -----------------------------------------------------------------------------------
def r1_shaped_routing(n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids int16 and gate weights float32 `[T, 58, 8]`, highest weight first, captured from a RANDOM-INIT
    DeepSeek-V3 at R1's routing shape over WordNet texts (bench/r1_routing.py): routing as skewed and
    token-correlated as a model makes it, with the model's own weights (summing to 2.5)."""
    from r1_routing import r1_routing

    routing = r1_routing(n_tokens)
    return routing.experts.astype(np.int16), routing.weights


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


WEIGHTS_LEAF = "weights.list.element.list.element"
EXPERTS_LEAF = "experts.list.element.list.element"
WRITER = "writer.py"
BSS_WEIGHTS = "bss weights (DuckDB cannot read)"
# What atlas/writer.py writes (`parquet_options`, one encoding per value type), and one choice changed each.
WRITER_VARIANTS = (WRITER, BSS_WEIGHTS, "no dictionary for ids")


def variant_options(schema: pa.Schema, variant: str) -> dict:
    from atlas_build.atlas.writer import parquet_options

    options = parquet_options(schema)
    dictionary, split = options["use_dictionary"], options["use_byte_stream_split"]
    if variant == BSS_WEIGHTS:  # smaller float16 weights, but DuckDB refuses them (bench/bench_encoding.py)
        options.update(
            use_dictionary=[p for p in dictionary if p != WEIGHTS_LEAF],
            use_byte_stream_split=[*split, WEIGHTS_LEAF],
        )
    elif variant == "no dictionary for ids":
        options.update(use_dictionary=[p for p in dictionary if p != EXPERTS_LEAF])
    return options


def write_variant(table: pa.Table, path: Path, variant: str) -> None:
    pq.write_table(table, path, **variant_options(table.schema, variant))


def round_significant_bits(values: np.ndarray, bits: int = 8) -> np.ndarray:
    """float16 values rounded to `bits` significant bits (8: bfloat16's precision), still float16."""
    drop = 11 - bits
    raw = values.astype(np.float16).view(np.uint16).astype(np.uint32)
    raw = ((raw + (1 << (drop - 1))) >> drop) << drop
    return raw.astype(np.uint16).view(np.float16)


def bytes_per_entry(shard_table_real: pa.Table, n_tokens: int) -> dict:
    from atlas_build.atlas.routing import nested_fixed_list
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.atlas.writer import conform

    ids, weights = r1_shaped_routing(n_tokens)
    # Per-token columns from a real shard (repeated to n_tokens): strings, spans, flags as they are.
    base = shard_table_real.drop_columns(["experts", "weights"])
    base = pa.concat_tables([base] * (n_tokens // base.num_rows + 1)).slice(0, n_tokens)
    entries = n_tokens * R1_MOE_LAYERS * R1_TOP_K
    cases = {
        "float16 weights": (ids, weights.astype(np.float16)),
        "float16 weights at 8 significant bits (lossy)": (ids, round_significant_bits(weights)),
        "ids only, weight order": (ids, None),
        "ids only, ascending (vllm)": (np.sort(ids, axis=-1), None),
    }
    results = {}
    for case, (case_ids, case_weights) in cases.items():
        schema = routing_schema(
            R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K, None if case_weights is None else "float16"
        )
        if case_weights is None:
            weight_col = pa.nulls(n_tokens, schema.field("weights").type)
        else:
            weight_col = nested_fixed_list(case_weights, pa.float16())
        experts = nested_fixed_list(case_ids.astype(np.uint8), pa.uint8())
        table = conform(base.append_column("experts", experts).append_column("weights", weight_col), schema)
        for variant in WRITER_VARIANTS:
            if case_weights is None and variant == BSS_WEIGHTS:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path, again = Path(tmp) / "a.parquet", Path(tmp) / "b.parquet"
                started = time.process_time()
                write_variant(table, path, variant)
                write_s = time.process_time() - started
                write_variant(table, again, variant)
                deterministic = path.read_bytes() == again.read_bytes()
                cols = column_bytes(path)
                total = path.stat().st_size
            routing = cols["experts"] + cols["weights"]
            results[f"{case} | {variant}"] = {
                "ids_B_per_entry": round(cols["experts"] / entries, 3),
                "weights_B_per_entry": round(cols["weights"] / entries, 3),
                "routing_B_per_entry": round(routing / entries, 3),
                "file_B_per_entry": round(total / entries, 3),
                "other_columns_B_per_token": round((total - routing) / n_tokens, 2),
                "write_us_per_token": round(write_s / n_tokens * 1e6, 1),
                "deterministic": deterministic,
            }
    print(
        f"  R1 shape, {n_tokens} tokens x {R1_MOE_LAYERS} layers x top-{R1_TOP_K} of {R1_EXPERTS}, routing "
        "captured from a RANDOM-INIT model (bench/r1_routing.py); B per (token, layer, k):"
    )
    for key, r in results.items():
        goal = BYTES_TARGET_IDS if key.startswith("ids only") else BYTES_TARGET_WEIGHTS
        ok = "meets" if r["routing_B_per_entry"] <= goal else "over"
        print(
            f"    {key:<70} ids {r['ids_B_per_entry']:.3f} + weights {r['weights_B_per_entry']:.3f} = "
            f"{r['routing_B_per_entry']:.3f} ({ok} {goal}); whole file {r['file_B_per_entry']:.3f}; "
            f"write {r['write_us_per_token']:.1f} us/token"
            f"{'' if r['deterministic'] else '  NOT DETERMINISTIC'}"
        )
    return results


def r1_capture_side_cost(shard_table_real: pa.Table, n_tokens: int) -> dict:
    """CPU cost per token, at R1's shape, of what a build does after the forward pass: vLLM's array ->
    atlas ids (`routing_batch_from_vllm`, prompts of 8 tokens), the routing rows (`routing_table`) and the atomic
    Parquet write. The hf engine's own capture (hooks, sort by weight) runs on the model's device."""
    from atlas_build.atlas.routing import routing_table
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.atlas.writer import write_parquet_atomic
    from atlas_build.engines.vllm import routing_batch_from_vllm

    ids, weights = r1_shaped_routing(n_tokens)
    n_layers = R1_MOE_LAYERS + 3  # R1: 3 dense layers, then 58 MoE
    full = np.zeros((n_tokens, n_layers, R1_TOP_K), np.int32)
    full[:, 3:] = ids
    # What LLM.generate returns for prompts of 8 tokens (`outputs[0].routed_experts`, dense layers zero).
    encoded, outputs = [], []
    for start in range(0, n_tokens - 7, 8):
        token_ids = np.arange(start, start + 8, dtype=np.int64)
        encoded.append({"ids": token_ids, "spans": np.zeros((8, 2), np.int32)})
        outputs.append(
            SimpleNamespace(
                prompt_token_ids=token_ids.tolist(),
                outputs=[SimpleNamespace(routed_experts=full[start : start + 8])],
            )
        )
    started = time.process_time()
    routing_batch_from_vllm(
        encoded,
        ["a"] * (8 * len(encoded)),
        outputs,
        num_hidden_layers=n_layers,
        moe_layers=tuple(range(3, n_layers)),
        n_routed_experts=R1_EXPERTS,
        top_k=R1_TOP_K,
    )
    mapping = time.process_time() - started
    texts = n_tokens // 8
    counts = np.full(texts, 8)
    spans = np.tile(np.array([[0, 1]], np.int32), (texts * 8, 1))
    out = {}
    for storage, w in (("float16", weights), (None, None)):
        schema = routing_schema(R1_EXPERTS, R1_MOE_LAYERS, R1_TOP_K, storage)
        started = time.process_time()
        table = routing_table(
            schema,
            source_ids=[f"t{i}" for i in range(texts)],
            corpus=["senses"] * texts,
            token_counts=counts,
            token_ids=np.zeros(texts * 8, np.int64),
            tokens=["a"] * (texts * 8),
            char_spans=spans,
            is_target=np.zeros(texts * 8, bool),
            experts=ids[: texts * 8],
            weights=None if w is None else w[: texts * 8],
        )
        with tempfile.TemporaryDirectory() as tmp:
            write_parquet_atomic(table, Path(tmp) / "r1.parquet", schema)
        out["table_and_write_us_per_token" + ("" if storage else "_ids_only")] = round(
            (time.process_time() - started) / (texts * 8) * 1e6, 1
        )
    out["vllm_mapping_us_per_token"] = round(mapping / n_tokens * 1e6, 1)
    print(
        f"  capture-side CPU cost at R1's shape: vLLM array -> atlas ids {out['vllm_mapping_us_per_token']:.1f} us/token; "
        f"rows + Parquet write {out['table_and_write_us_per_token']:.1f} us/token with float16 weights, "
        f"{out['table_and_write_us_per_token_ids_only']:.1f} ids only"
    )
    return out


def real_shard_bytes(table: pa.Table, spec) -> dict:
    """Bytes per entry of a real routing shard of the tiny model (its own shape: 5 layers x top-8 of 32)."""
    entries = table.num_rows * len(spec.moe_layers) * spec.top_k
    out = {}
    for variant in (WRITER, BSS_WEIGHTS):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "real.parquet"
            write_variant(table, path, variant)
            cols = column_bytes(path)
        out[variant] = {
            "ids_B_per_entry": round(cols["experts"] / entries, 3),
            "weights_B_per_entry": round(cols["weights"] / entries, 3),
        }
        print(
            f"  real tiny-model shard ({table.num_rows} tokens, 5 layers x top-8 of 32), {variant}: ids "
            f"{out[variant]['ids_B_per_entry']:.3f} + weights {out[variant]['weights_B_per_entry']:.3f} B/entry"
        )
    return out


# ---- 4. atlas size ----------------------------------------------------------------------------------------
def corpus_tokens(tables, quick: bool, max_lemmas: int) -> dict:
    from transformers import AutoTokenizer

    from atlas_build.corpora import build_wordnet_corpora
    from atlas_build.models import builtin_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(builtin_checkpoint("tiny-deepseek-v3"))
    if not quick:
        tables = build_wordnet_corpora(max_lemmas=None, seed=0)
    out = {}
    for name in ("senses", "substitutions"):
        texts = tables[name].column("text").to_pylist()
        counts = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
        n_texts = len(texts) if not quick else FULL_TEXTS[name]
        out[name] = {
            "texts": n_texts,
            "tokens_per_text": round(float(counts.mean()), 3),
            "tokens": int(counts.sum()) if not quick else int(round(counts.mean() * n_texts)),
            "measured_on_texts": len(texts),
        }
    return out


def atlas_size(tokens: dict, per_entry: dict) -> dict:
    """Routing config size for `tokens` at R1's shape: entries x routing B/entry + tokens x other columns."""
    total_tokens = sum(v["tokens"] for v in tokens.values())
    entries = total_tokens * R1_MOE_LAYERS * R1_TOP_K
    out: dict = {"tokens": total_tokens, "entries": entries, "MB": {}}
    for key in (
        f"float16 weights | {WRITER}",
        f"float16 weights | {BSS_WEIGHTS}",
        f"ids only, weight order | {WRITER}",
        f"ids only, ascending (vllm) | {WRITER}",
    ):
        r = per_entry[key]
        size = entries * r["routing_B_per_entry"] + total_tokens * r["other_columns_B_per_token"]
        out["MB"][key] = round(size / 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--max-lemmas", type=int, default=30, help="WordNet lemmas routed for (1) and (2).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--entry-tokens", type=int, default=20000, help="tokens of the R1-shaped table (3).")
    parser.add_argument("--quick", action="store_true", help="(4) from --max-lemmas lemmas, scaled.")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    started = time.perf_counter()
    print(f"bench_build: device {args.device}, torch threads {torch.get_num_threads()}")
    items, tables = corpus_items(args.max_lemmas)
    results: dict = {"device": args.device, "max_lemmas": args.max_lemmas}

    print("1. capture overhead (capture+write vs plain forward, same engine, model, batches)")
    results["overhead"] = [
        measure_overhead("tiny-deepseek-v3", "tiny-deepseek-v3", items, args.device, args.repeats)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        v3 = v3_shaped_checkpoint(Path(tmp) / "v3-shaped", args.device)
        v3_items = items if args.device == "cuda" else items[: max(64, len(items) // 4)]
        results["overhead"].append(
            measure_overhead("v3-shaped (256 experts)", str(v3), v3_items, args.device, args.repeats)
        )

        print("2. bfloat16 vs float32 expert sets")
        texts = [item.text for item in items[:400]]
        results["bf16_vs_fp32"] = [
            dtype_agreement("tiny-deepseek-v3", "tiny-deepseek-v3", texts, args.device),
            dtype_agreement("v3-shaped (256 experts)", str(v3), texts[:200], args.device),
        ]

    print("3. bytes per routing entry at DeepSeek-R1's shape")
    from atlas_build.atlas.schema import routing_schema
    from atlas_build.builder import shard_table
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine("tiny-deepseek-v3")
    spec = engine.spec
    real = shard_table(
        engine,
        items[:512],
        routing_schema(spec.n_routed_experts, len(spec.moe_layers), spec.top_k, "float16"),
        True,
    )
    engine.close()
    results["tiny_real_shard"] = real_shard_bytes(real, spec)
    results["r1_capture_side_cost"] = r1_capture_side_cost(real, args.entry_tokens)
    results["bytes_per_entry"] = bytes_per_entry(real, args.entry_tokens)

    print("4. expected atlas size, full WordNet corpora, DeepSeek-R1 (58 MoE layers x top-8)")
    tokens = (
        corpus_tokens(tables, args.quick or tables is None, args.max_lemmas) if tables is not None else None
    )
    if tokens:
        results["corpus_tokens"] = tokens
        results["atlas_size_MB"] = atlas_size(tokens, results["bytes_per_entry"])
        for name, t in tokens.items():
            print(
                f"  {name}: {t['texts']} texts x {t['tokens_per_text']:.2f} tokens = {t['tokens']:,} tokens"
            )
        size = results["atlas_size_MB"]
        print(
            f"  {size['tokens']:,} tokens x {R1_MOE_LAYERS} x {R1_TOP_K} = {size['entries']:,} routing entries"
        )
        for label, mb in size["MB"].items():
            print(f"  routing-deepseek-r1, {label}: {mb:,.0f} MB")
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"done in {results['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
