"""The report's section and figure for router scores beyond the top-k (`models[slug].scores`, metrics/scores/compute.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FIGURE_SENTENCE = (
    "Left: how far the last chosen expert's selection score lies above the best rejected one, per MoE layer "
    "(median and 10th–90th percentile band, log scale), with the share of near-ties on the right axis, so a "
    "low band means choices that a small perturbation of the hidden state could flip; right: the sense "
    "effect Δκ per layer on all sense pairs and on the pairs whose two targets were routed confidently "
    "(margin above the layer's median), with 95% lemma-clustered bootstrap intervals."
)


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _ci(iv: dict | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "–"
    fmt = lambda v: "–" if v is None else f"{v:+.3f}"  # noqa: E731 - local formatter
    return f"{fmt(iv['estimate'])} [{fmt(iv.get('ci_low'))}, {fmt(iv.get('ci_high'))}]"


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_scores(slug: str, entry: dict, path: Path) -> bool:
    sc = entry.get("scores")
    if not sc or not sc.get("margin_quantiles"):
        return False
    from matplotlib.ticker import MaxNLocator

    x = entry["model"]["moe_layers"]
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2)
    q = sc["margin_quantiles"]
    left.plot(x, _arr(q["q50"]), marker="o", ms=3, color="tab:blue", label="median margin")
    left.fill_between(x, _arr(q["q10"]), _arr(q["q90"]), color="tab:blue", alpha=0.2, linewidth=0)
    if np.nanmin(_arr(q["q10"])) > 0:
        left.set_yscale("log")
    left.set_ylabel("s(last chosen) − s(first rejected)")
    twin = left.twinx()
    twin.plot(
        x, _arr(sc["near_tie_share"]), ls="--", color="tab:red", label=f"near-ties (< {sc['near_tie']:g})"
    )
    twin.set_ylabel("share of near-ties", color="tab:red")
    left.set_title(f"{slug}: selection margin (top-{sc['scores_top_m']} scores stored)", fontsize=9)
    cs = sc.get("confident_sense")
    if cs:
        for name, color in (("all", "black"), ("confident", "tab:green")):
            iv = cs[name]["delta"]
            right.plot(x, _arr(iv["estimate"]), marker="o", ms=3, color=color, label=f"{name} pairs")
            right.fill_between(
                x, _arr(iv["ci_low"]), _arr(iv["ci_high"]), color=color, alpha=0.15, linewidth=0
            )
        right.axhline(0, color="grey", lw=0.8)
        right.set_ylabel("Δκ same − different sense")
        right.set_title("the sense effect on confidently routed targets", fontsize=9)
        right.legend(fontsize=7)
    else:
        right.set_axis_off()
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("decoder layer (MoE layers only)")
    left.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110)
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def score_figures(metrics: dict, out_dir: Path) -> dict[str, str]:
    figures = {}
    for slug, entry in metrics["models"].items():
        name = f"scores-{slug}.png"
        if plot_scores(slug, entry, out_dir / name):
            figures[f"scores-{slug}"] = name
    return figures


def score_section(metrics: dict, number: int = 9) -> list[str]:
    lines = ["", f"## {number}. Router scores beyond the top-k", ""]
    scored = [(s, e, e["scores"]) for s, e in metrics["models"].items() if e.get("scores")]
    if not scored:
        return [
            *lines,
            "No model of this atlas was built with `atlas build --scores M`: the routing configs hold the chosen "
            "experts only, so margins and near-ties are not computed.",
        ]
    lines.append(
        "Built with `--scores M`: per token and MoE layer the M experts of highest selection score (the score the "
        "router chooses on) and those scores. The margin is the last chosen expert's score minus the best "
        "rejected one's within the kept groups; a group override is a rejected expert outside the kept groups "
        "that scored higher than the last chosen."
    )
    figures = metrics.get("figures", {})
    for slug, entry, sc in scored:
        lines += ["", f"### `{slug}`{' (RANDOM-INIT)' if entry.get('random_init') else ''}", ""]
        if sc.get("note"):
            lines += [sc["note"], ""]
        lines += [
            "| layer | margin defined | margin q10 / median / q90 | near-ties | group overrides |",
            "|---:|---:|---|---:|---:|",
        ]
        q = sc.get("margin_quantiles") or {}
        for i, layer in enumerate(entry["model"]["moe_layers"]):
            quant = " / ".join(_num((q.get(k) or [None] * (i + 1))[i]) for k in ("q10", "q50", "q90"))
            lines.append(
                f"| {layer} | {_num(sc['margin_defined_share'][i], 3)} | {quant} | {_num(sc['near_tie_share'][i], 3)} "
                f"| {_num(sc['group_overridden_share'][i], 3)} |"
            )
        cs = sc.get("confident_sense")
        if cs:
            lines += [
                "",
                f"Sense effect (Δκ, layer mean) on all pairs: {_ci(cs['all']['layer_mean'])}; on confidently routed "
                f"targets only ({cs['threshold']}): {_ci(cs['confident']['layer_mean'])}.",
            ]
        if f"scores-{slug}" in figures:
            lines += ["", FIGURE_SENTENCE, "", f"![scores {slug}]({figures[f'scores-{slug}']})"]
    return lines
