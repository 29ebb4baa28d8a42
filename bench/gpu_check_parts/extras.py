"""The GPU check's paths added after its first version: `--scores` capture, router-input capture and
`atlas intervene`, each on the device in float32 against the CPU float32 reference (issue 30).

  * scores: the top-M selection scores (`HFEngine(scores_top_m=M)`) of the same texts; where the device's
    expert set equals the reference's, the stored scores must agree within float32 rounding of the router's
    arithmetic (relative 1e-4 of the score scale);
  * router inputs: the full router-input vectors (`router_input_dim=0`, every MoE layer); relative 1e-3 of
    the vectors' norm (a whole decoder stack of float32 reductions lies before them);
  * intervene: the planted-causal checkpoint of tests/intervene/planted.py (a tiny Mixtral whose expert 5 at
    layer 1 decides the river sense's next token): removing expert 5 must lower log p(next token) by the same
    amount on both devices (within 1e-3) and far below 0, and removing the only-frequent expert 2 must not.
Each returns a dict of figures with `passed`; a failure to run is recorded as `{"error": ...}`.
"""

from __future__ import annotations

import os

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above

from gpu_check_parts.arithmetic import same_sets  # noqa: E402
from gpu_check_parts.common import ROOT, failure  # noqa: E402

SCORES_TOP_M = 16
SCORES_RTOL = 1e-4
ROUTER_INPUTS_RTOL = 1e-3
INTERVENE_ATOL = 1e-3
# The planted expert's ablation must move log p(next token) by at least this much (it is ~ -4 on CPU).
INTERVENE_MIN_DROP = 1.0


def _route(model: str, texts: list[str], device: str, batch_size: int, **engine_args):
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine(model, device=device, dtype="float32", batch_size=batch_size, **engine_args)
    try:
        return engine.route(texts)
    finally:
        engine.close()


def check_scores(model: str, texts: list[str], device: str, batch_size: int) -> dict:
    """`--scores` on the device against the CPU: identical top-M sets and scores within float32 rounding."""
    try:
        ref = _route(model, texts, "cpu", batch_size, scores_top_m=SCORES_TOP_M)
        dev = _route(model, texts, device, batch_size, scores_top_m=SCORES_TOP_M)
    except Exception as error:
        return {"error": failure(error)}
    agree = same_sets(ref.experts, dev.experts)  # [T, L]: the routing itself agrees here
    same_top_m = (np.sort(ref.score_experts, -1) == np.sort(dev.score_experts, -1)).all(-1)
    both = agree & same_top_m
    scale = float(np.abs(ref.scores).max()) or 1.0
    diff = np.abs(ref.scores.astype(np.float64) - dev.scores.astype(np.float64))[both]
    max_rel = float(diff.max() / scale) if diff.size else 0.0
    return {
        "scores_top_m": SCORES_TOP_M,
        "token_layers": int(agree.size),
        "same_expert_set": float(agree.mean()),
        "same_top_m_set": float(same_top_m.mean()),
        "max_score_diff_relative": max_rel,
        "rtol": SCORES_RTOL,
        "passed": bool(max_rel <= SCORES_RTOL and same_top_m.mean() >= 0.99),
    }


def check_router_inputs(model: str, texts: list[str], device: str, batch_size: int) -> dict:
    """Full router-input vectors on the device against the CPU, relative to each vector's norm."""
    try:
        args = {"router_input_layers": "all", "router_input_dim": 0}
        ref = _route(model, texts, "cpu", batch_size, **args).router_inputs
        dev = _route(model, texts, device, batch_size, **args).router_inputs
    except Exception as error:
        return {"error": failure(error)}
    ref, dev = ref.astype(np.float64), dev.astype(np.float64)
    norms = np.maximum(np.linalg.norm(ref, axis=-1), 1e-30)
    rel = np.linalg.norm(ref - dev, axis=-1) / norms
    return {
        "vectors": int(rel.size),
        "dim": int(ref.shape[-1]),
        "max_relative_error": float(rel.max()),
        "median_relative_error": float(np.median(rel)),
        "rtol": ROUTER_INPUTS_RTOL,
        "passed": bool(rel.max() <= ROUTER_INPUTS_RTOL),
    }


def _ablation_deltas(path: str, device: str, texts: list[str]) -> dict[int, np.ndarray]:
    """Per river text, the change of log p(token after `bank`) when each planted expert is removed."""
    import sys

    from atlas_build.engines.hf import HFEngine
    from atlas_build.intervene.run import CLEAN, Condition, Encoded, Intervener

    sys.path.insert(0, str(ROOT / "tests" / "intervene"))
    from planted import FREQUENT, LAYER, PLANTED  # noqa: PLC0415 - the tests' own checkpoint recipe

    engine = HFEngine(path, device=device, dtype="float32", batch_size=8)
    pad = engine.tokenizer.pad_token_id or 0
    runner = Intervener(
        engine.detach_model(), engine.adapter, engine.spec, engine.encode, engine.device, pad, 8
    )
    try:
        encoded = engine.encode(texts)
        items = []
        for text, enc in zip(texts, encoded, strict=True):
            start = text.index("bank")
            spans = enc["spans"]
            hit = (spans[:, 0] >= 0) & (spans[:, 0] < start + 4) & (spans[:, 1] > start)
            items.append(Encoded(np.asarray(enc["ids"], np.int64), np.flatnonzero(hit)))
        slot = runner.slot_of[LAYER]
        clean = runner.run([(e, CLEAN) for e in items])
        out = {}
        for expert in (PLANTED, FREQUENT):
            hit = runner.run([(e, Condition(excluded={slot: (expert,)})) for e in items])
            last = [int(e.targets[-1]) for e in items]
            out[expert] = np.array(
                [h.logprobs[t] - c.logprobs[t] for h, c, t in zip(hit, clean, last, strict=True)]
            )
        return out
    finally:
        runner.close()
        engine.close()


def check_intervene(work, device: str) -> dict:
    """The planted-causal checkpoint's ablations: the same effects on the device as on the CPU."""
    import sys

    try:
        sys.path.insert(0, str(ROOT / "tests" / "intervene"))
        from planted import FREQUENT, PLANTED, RIVER, build_planted  # noqa: PLC0415

        path = str(build_planted(work / "planted-causal"))
        ref = _ablation_deltas(path, "cpu", RIVER)
        dev = _ablation_deltas(path, device, RIVER)
    except Exception as error:
        return {"error": failure(error)}
    planted_cpu, planted_dev = float(ref[PLANTED].mean()), float(dev[PLANTED].mean())
    frequent_cpu, frequent_dev = float(ref[FREQUENT].mean()), float(dev[FREQUENT].mean())
    max_diff = float(max(np.abs(ref[e] - dev[e]).max() for e in (PLANTED, FREQUENT)))
    return {
        "texts": len(RIVER),
        "planted_expert_delta": {"reference_cpu": planted_cpu, "device": planted_dev},
        "frequent_expert_delta": {"reference_cpu": frequent_cpu, "device": frequent_dev},
        "max_per_text_diff": max_diff,
        "atol": INTERVENE_ATOL,
        "passed": bool(
            max_diff <= INTERVENE_ATOL
            and planted_dev <= -INTERVENE_MIN_DROP
            and abs(frequent_dev) < INTERVENE_MIN_DROP / 4
        ),
    }


def run_extras(model: str, texts: list[dict], device: str, work, log) -> dict:
    """Every extra check on `model` (the built-in tiny model) and the planted-causal checkpoint."""
    sample = [t["text"] for t in texts[:32]]
    results = {}
    for name, run in (
        ("scores", lambda: check_scores(model, sample, device, 16)),
        ("router_inputs", lambda: check_router_inputs(model, sample, device, 16)),
        ("intervene", lambda: check_intervene(work, device)),
    ):
        log(f"  extra: {name}")
        results[name] = run()
        outcome = results[name]
        verdict = "passed" if outcome.get("passed") else "FAILED"
        log(f"    {name}: " + (f"error {outcome['error']['message']}" if "error" in outcome else verdict))
    return results
