"""One model: the CPU reference against the device runs, then speed."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above

from gpu_check_parts.arithmetic import same_sets, selection_margins, summarize_agreement  # noqa: E402
from gpu_check_parts.common import Plan, failure  # noqa: E402
from gpu_check_parts.probe import Probed, use_eager_experts  # noqa: E402


@dataclass(frozen=True)
class Run:
    name: str
    device: str
    dtype: str
    batch_size: int


def runs_for(device: str, plan: Plan) -> list[Run]:
    if device == "cuda":
        return [
            Run("cuda-float32", "cuda", "float32", plan.batch_size),
            Run("cuda-bfloat16", "cuda", "bfloat16", plan.batch_size),
        ]
    # No second device: a second float32 load that routes every text alone (other padding, other matmul
    # shapes), and bfloat16.
    return [
        Run("cpu-float32-reload", "cpu", "float32", 1),
        Run("cpu-bfloat16", "cpu", "bfloat16", plan.batch_size),
    ]


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def clock(device: str) -> float:
    """GPU: wall time after a synchronize. CPU: this process's CPU time (wall time on a shared machine is
    noise)."""
    sync(device)
    return time.perf_counter() if device == "cuda" else time.process_time()


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def compare_runs(
    model: str, texts: list[dict], runs: list[Run], plan: Plan, log, deadline: float = float("inf")
) -> tuple[dict, dict]:
    """Route `texts` with the CPU float32 reference and every run, batch by batch in lockstep.

    Batches stop once `deadline` (a `time.perf_counter()` value) has passed, after the first: the figures
    then cover the texts routed so far (`reference.texts_compared`).

    Returns:
        `(reference figures, {run name: figures})`; a run that fails is `{"error": ...}`, the others go on.
    """
    import torch

    from atlas_build.engines.hf import HFEngine

    reference = Probed(HFEngine(model, device="cpu", dtype="float32", batch_size=plan.batch_size))
    spec = reference.engine.spec
    # Longest first, as `route` orders a call: each chunk below is then routed in exactly this order, so
    # row b of a recorded batch is text b of the chunk.
    lengths = np.array([len(e["ids"]) for e in reference.engine.encode([t["text"] for t in texts])])
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    engines: dict[str, Probed] = {}
    failures: dict[str, dict] = {}
    for run in runs:
        try:
            engines[run.name] = Probed(
                HFEngine(model, device=run.device, dtype=run.dtype, batch_size=run.batch_size)
            )
        except Exception as error:  # recorded, the other runs go on
            failures[run.name] = failure(error)
    collected: dict[str, dict[str, list]] = {name: {} for name in ["reference", *engines]}
    route_s = dict.fromkeys(collected, 0.0)
    counts: list[np.ndarray] = []

    def keep(name: str, **arrays) -> None:
        for key, value in arrays.items():
            collected[name].setdefault(key, []).append(value)

    compared = 0
    for start in range(0, len(order), plan.batch_size):
        if compared and time.perf_counter() > deadline:
            log(f"    time budget spent: compared {compared} of {len(texts)} texts")
            break
        chunk = order[start : start + plan.batch_size]
        compared += len(chunk)
        chunk_texts = [texts[i]["text"] for i in chunk]
        chunk_lengths = lengths[chunk]
        counts.append(chunk_lengths)
        started = time.perf_counter()
        ref_batch = reference.route(chunk_texts)
        route_s["reference"] += time.perf_counter() - started
        if not np.array_equal(ref_batch.token_counts, chunk_lengths):
            raise RuntimeError("the reference tokenized a text differently from its own encode()")
        ref_scores, ref_bias, ref_choice = reference.probe.take(chunk_lengths, plan.batch_size)
        set_margin, top1_margin = selection_margins(
            ref_scores, ref_bias, spec.n_group, spec.topk_group, spec.top_k
        )
        top1 = torch.from_numpy(ref_batch.experts[..., :1].astype(np.int64))
        keep(
            "reference",
            experts=ref_batch.experts,
            recomputed_same=same_sets(ref_choice.numpy(), ref_batch.experts),
            set_margin=set_margin.numpy(),
            top1_margin=top1_margin.numpy(),
            top1_score=ref_scores.double().gather(-1, top1)[..., 0].numpy(),
        )
        ref_choice_scores = ref_scores + ref_bias
        for name, probed in list(engines.items()):
            device = probed.engine.device.type
            try:
                sync(device)
                started = time.perf_counter()
                batch = probed.route(chunk_texts)
                sync(device)
                route_s[name] += time.perf_counter() - started
                scores, bias, choice = probed.probe.take(chunk_lengths, probed.engine.batch_size)
            except Exception as error:
                failures[name] = failure(error)
                engines.pop(name).close()
                collected.pop(name)
                continue
            keep(
                name,
                experts=batch.experts,
                recomputed_same=same_sets(choice.numpy(), batch.experts),
                choice_noise=((scores + bias) - ref_choice_scores).abs().amax(-1).double().numpy(),
                score_noise=(scores - ref_scores).abs().amax(-1).double().numpy(),
            )
    token_counts = np.concatenate(counts)
    tokens = int(token_counts.sum())
    ref = {key: np.concatenate(value) for key, value in collected.pop("reference").items()}
    reference_out = {
        "device": "cpu",
        "dtype": "float32",
        "batch_size": plan.batch_size,
        "texts": len(texts),
        "texts_compared": compared,
        "tokens": tokens,
        "moe_layers": len(spec.moe_layers),
        "experts_implementation": reference.experts_implementation(),
        "experts_fallback": reference.fallback,
        "recomputed_choice_agreement": float(ref["recomputed_same"].mean()),
        "route_s_with_probes": round(route_s["reference"], 3),
        "tokens_per_s_with_probes": round(tokens / route_s["reference"], 1) if route_s["reference"] else None,
        "torch_threads": torch.get_num_threads(),
    }
    results: dict[str, dict] = {name: {"error": error} for name, error in failures.items()}
    for name, arrays in collected.items():
        run = next(r for r in runs if r.name == name)
        arrays = {key: np.concatenate(value) for key, value in arrays.items()}
        figures = summarize_agreement(
            ref["experts"],
            arrays["experts"],
            token_counts,
            ref["set_margin"],
            ref["top1_margin"],
            arrays["choice_noise"],
            arrays["score_noise"],
            ref["top1_score"],
        )
        figures["recomputed_choice_agreement"] = float(arrays["recomputed_same"].mean())
        results[name] = {
            "device": run.device,
            "dtype": run.dtype,
            "batch_size": run.batch_size,
            "experts_implementation": engines[name].experts_implementation(),
            "experts_fallback": engines[name].fallback,
            "route_s_with_probes": round(route_s[name], 3),
            "agreement": figures,
        }
        log(
            f"    {name}: identical expert sets {figures['same_expert_set']:.4%}, top-1 "
            f"{figures['same_top1']:.4%}; primary differences {figures['primary_differences']} "
            f"({figures['primary_explained']} near ties), "
            f"downstream {figures['downstream_set_differences']}; "
            f"recomputed choice {figures['recomputed_choice_agreement']:.4%}"
            + (f"; eager experts after: {engines[name].fallback}" if engines[name].fallback else "")
        )
    reference.close()
    for probed in engines.values():
        probed.close()
    release("cuda" if any(r.device == "cuda" for r in runs) else "cpu")
    return reference_out, results


def plain_forward(engine, base_model, texts: list[str]) -> int:
    """Tokenize and run the engine's own batches (longest first, right padding) through a hook-free copy."""
    import torch

    encoded = engine.encode(texts)
    lengths = np.array([len(e["ids"]) for e in encoded])
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(order), engine.batch_size):
            batch = order[start : start + engine.batch_size]
            width = int(lengths[batch].max())
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.from_numpy(encoded[i]["ids"])
                mask[row, : lengths[i]] = 1
            base_model(
                input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device), use_cache=False
            )
    return int(lengths.sum())


def measure_speed(model: str, texts: list[dict], run: Run, plan: Plan, eager_experts: bool = False) -> dict:
    """Capture (`engine.route` + `build.shard_table`) vs the plain forward, shard by shard, alternated.

    `eager_experts`: both copies use transformers' eager experts (where the comparison had to fall back).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from atlas_build.atlas.schema import routing_schema
    from atlas_build.atlas.texts import TextItem
    from atlas_build.builder import shard_table
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine(model, device=run.device, dtype=run.dtype, batch_size=plan.batch_size)
    if eager_experts:
        use_eager_experts(engine._model)
    spec = engine.spec
    schema = routing_schema(spec.n_routed_experts, len(spec.moe_layers), spec.top_k, "float16")
    items = [TextItem(t["id"], "senses", t["text"], t["target_start"], t["target_end"]) for t in texts]
    shards = [items[i : i + plan.texts_per_shard] for i in range(0, len(items), plan.texts_per_shard)]
    cuda = run.device == "cuda"
    weights_bytes = sum(p.numel() * p.element_size() for p in engine._model.parameters())
    # The capture path alone first (engine resident, no second copy): its peak is what a build needs.
    if cuda:
        release("cuda")
        torch.cuda.reset_peak_memory_stats()
    tokens = sum(shard_table(engine, shard, schema, True).num_rows for shard in shards)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    plain_model = AutoModelForCausalLM.from_pretrained(engine.path, dtype=getattr(torch, run.dtype))
    plain_model = plain_model.to(run.device).eval()
    if eager_experts:
        use_eager_experts(plain_model)
    base = getattr(plain_model, plain_model.base_model_prefix)
    plain_forward(engine, base, [item.text for item in shards[0]])  # warm-up of the second copy
    plain_s = np.zeros((plan.speed_repeats, len(shards)))
    capture_s = np.zeros((plan.speed_repeats, len(shards)))
    for r in range(plan.speed_repeats):
        for n, shard in enumerate(shards):
            for path in ("plain", "capture") if (r + n) % 2 == 0 else ("capture", "plain"):
                started = clock(run.device)
                if path == "plain":
                    plain_forward(engine, base, [item.text for item in shard])
                else:
                    shard_table(engine, shard, schema, True)
                (plain_s if path == "plain" else capture_s)[r, n] = clock(run.device) - started
    engine.close()
    del plain_model, base
    release(run.device)
    plain, capture = float(np.median(plain_s, axis=0).sum()), float(np.median(capture_s, axis=0).sum())
    return {
        "clock": "wall, after torch.cuda.synchronize" if cuda else "process CPU time",
        "texts": len(items),
        "tokens": int(tokens),
        "shards": len(shards),
        "repeats": plan.speed_repeats,
        "plain_forward_s": round(plain, 4),
        "capture_s": round(capture, 4),
        "overhead_ratio": round(capture / plain, 4) if plain else None,
        "overhead_us_per_token": round((capture - plain) / tokens * 1e6, 2) if tokens else None,
        "tokens_per_s": round(tokens / capture, 1) if capture else None,
        "plain_tokens_per_s": round(tokens / plain, 1) if plain else None,
        "weights_bytes": int(weights_bytes),
        "peak_gpu_memory_bytes": int(peak) if peak is not None else None,
        "peak_gpu_memory_gib": round(peak / 2**30, 3) if peak is not None else None,
    }
