"""The report's section and figures for routing paths across layers (`models[slug].paths`, metrics/paths/compute.py).

Every figure comes with one sentence that says what it shows; `report.py` calls `path_figures` and
`path_section` and knows nothing else of the paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CONTROL_NAMES = ("token_identity", "context_words", "all", "null_model")
CONTROL_COLORS = {
    "raw": "black",
    "token_identity": "tab:purple",
    "context_words": "tab:green",
    "all": "tab:brown",
    "null_model": "tab:red",
}

FIGURE_SENTENCES = {
    "transitions": "Left: how much the top-1 expert at one MoE layer tells about the top-1 expert d layers "
    "later (mutual information in bits; dashed: the same after shuffling tokens, which keeps every "
    "expert's load), so a solid line above its dashed twin means tokens follow preferred routes; right: "
    "for the adjacent pair with the most information, log2 lift of each transition (red: taken more "
    "often than the loads alone predict).",
    "agreement": "Same-sense minus different-sense share of sense pairs whose target tokens take the same "
    "top-1 expert in every layer of a window of w consecutive MoE layers, raw and under each control, with "
    "95% lemma-clustered bootstrap intervals; a bar that stays above 0 under every control is a sense "
    "effect on whole routes rather than on one layer.",
    "diversity": "Left: distinct top-1 paths per token id, as a share of its occurrences, over windows of w "
    "layers (dashed: token ids shuffled over tokens), so a solid line far below its dashed twin means the "
    "token id fixes the route; right: how many bits of the target token's route the WordNet sense adds "
    "beyond its token id, against the 95th percentile of the same gain with senses permuted within each "
    "token id.",
}


def _label(slug: str, entry: dict) -> str:
    tags = [
        t
        for t, on in (("RANDOM-INIT", entry.get("random_init")), ("SYNTHETIC", entry.get("synthetic")))
        if on
    ]
    return slug + (f" ({', '.join(tags)})" if tags else "")


def _num(x, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(iv: dict | None) -> str:
    if not iv:
        return "–"
    return f"{_num(iv.get('estimate'), 3, True)} [{_num(iv.get('ci_low'), 3, True)}, {_num(iv.get('ci_high'), 3, True)}]"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _paths(metrics: dict) -> list[tuple[str, dict, dict]]:
    return [(s, e, e["paths"]) for s, e in metrics["models"].items() if e.get("paths")]


def plot_transitions(slug: str, entry: dict, counts: np.ndarray | None, path: Path) -> bool:
    tr = entry["paths"].get("transitions")
    if not tr or not tr["distances"]:
        return False
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2)
    for color, (d, block) in zip(
        ("tab:blue", "tab:orange", "tab:green"), tr["distances"].items(), strict=False
    ):
        x = block["from_layers"]
        left.plot(x, block["mi_bits"], marker="o", ms=3, color=color, label=f"d = {d}")
        left.plot(x, block["mi_shuffled_bits"], ls="--", color=color, lw=0.8)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("MoE layer l (decoder index)")
    left.set_ylabel("I(top-1 at l; top-1 at l+d), bits")
    left.set_title(f"{_label(slug, entry)}: cross-layer information (dashed: shuffled)", fontsize=9)
    left.legend(fontsize=7)
    d1 = tr["distances"].get("1")
    if counts is not None and d1 and len(counts):
        best = int(np.nanargmax(np.asarray(d1["mi_bits"], dtype=float)))
        c = counts[best].astype(np.float64)
        expected = c.sum(axis=1, keepdims=True) * c.sum(axis=0, keepdims=True) / max(c.sum(), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.log2(c / expected)
        lift[~np.isfinite(lift)] = np.nan
        image = right.imshow(lift, vmin=-2, vmax=2, cmap="RdBu_r", interpolation="nearest")
        fig.colorbar(image, ax=right, label="log2 lift (0 = loads alone)")
        right.set_xlabel(f"top-1 expert at layer {d1['to_layers'][best]}")
        right.set_ylabel(f"top-1 expert at layer {d1['from_layers'][best]}")
        right.set_title("transitions of the most informative adjacent pair", fontsize=9)
    else:
        right.set_axis_off()
    fig.savefig(path, dpi=110)
    return True


def plot_agreement(metrics: dict, path: Path) -> bool:
    rows = [(s, e, p["agreement"]) for s, e, p in _paths(metrics) if p.get("agreement")]
    if not rows:
        return False
    fig = _figure(5.5 * len(rows), 3.6)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, (slug, entry, ag) in zip(axes, rows, strict=True):
        names = list(ag["windows"])
        x = np.arange(len(names))
        series = [("raw", {n: ag["windows"][n]["delta"] for n in names})]
        for control in CONTROL_NAMES:
            if all(control in ag["windows"][n]["controls"] for n in names):
                series.append((control, {n: ag["windows"][n]["controls"][control]["delta"] for n in names}))
        width = 0.8 / len(series)
        for j, (name, ivs) in enumerate(series):
            est = np.array([ivs[n]["estimate"] if ivs[n]["estimate"] is not None else np.nan for n in names])
            lo = np.array([ivs[n]["ci_low"] if ivs[n]["ci_low"] is not None else np.nan for n in names])
            hi = np.array([ivs[n]["ci_high"] if ivs[n]["ci_high"] is not None else np.nan for n in names])
            err = np.vstack([np.clip(est - lo, 0, None), np.clip(hi - est, 0, None)])
            ax.errorbar(
                x + (j - (len(series) - 1) / 2) * width,
                est,
                yerr=err,
                fmt="o",
                ms=3,
                capsize=2,
                color=CONTROL_COLORS[name],
                label=name,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, [f"w = {n}" for n in names])
        ax.set_ylabel("Δ share of pairs on the same top-1 path")
        ax.set_title(f"{_label(slug, entry)}: sense-pair path agreement", fontsize=9)
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    return True


def plot_diversity(metrics: dict, path: Path) -> bool:
    rows = [(s, e, p) for s, e, p in _paths(metrics) if p.get("diversity", {}).get("windows")]
    if not rows:
        return False
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2)
    for color, (slug, entry, p) in zip(
        ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), rows, strict=False
    ):
        windows = p["diversity"]["windows"]
        names = [n for n in windows if windows[n].get("top1")]
        if names:
            left.plot(
                names,
                [windows[n]["top1"]["distinct_share"] for n in names],
                marker="o",
                color=color,
                label=_label(slug, entry),
            )
            left.plot(
                names, [windows[n]["top1"]["distinct_share_shuffled"] for n in names], ls="--", color=color
            )
        se = (p.get("sense_entropy") or {}).get("windows") or {}
        if se:
            names = list(se)
            right.plot(
                names, [se[n]["gain_bits"] for n in names], marker="o", color=color, label=_label(slug, entry)
            )
            right.plot(names, [se[n]["null_q95_bits"] for n in names], ls=":", color=color)
    left.set_xlabel("window w (MoE layers)")
    left.set_ylabel("distinct top-1 paths / occurrences")
    left.set_title("path diversity per token id (dashed: shuffled token ids)", fontsize=9)
    left.legend(fontsize=6)
    right.set_xlabel("window w (MoE layers)")
    right.set_ylabel("H(path | token) − H(path | token, sense), bits")
    right.set_title("what the sense adds (dotted: permutation null, 95th pct.)", fontsize=9)
    right.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    return True


def path_figures(metrics: dict, arrays: dict[str, dict[str, np.ndarray]], out_dir: Path) -> dict[str, str]:
    """Write the path figures into `out_dir`; returns `{figure key: file name}`."""
    figures: dict[str, str] = {}
    for slug, entry in metrics["models"].items():
        if entry.get("paths") and entry["paths"].get("transitions"):
            name = f"paths-transitions-{slug}.png"
            if plot_transitions(
                slug, entry, arrays.get(slug, {}).get("path_transition_counts"), out_dir / name
            ):
                figures[f"paths-transitions-{slug}"] = name
    if plot_agreement(metrics, out_dir / "paths-agreement.png"):
        figures["paths-agreement"] = "paths-agreement.png"
    if plot_diversity(metrics, out_dir / "paths-diversity.png"):
        figures["paths-diversity"] = "paths-diversity.png"
    return figures


def path_section(metrics: dict, number: int = 8) -> list[str]:
    """The report's markdown section on routing paths."""
    lines = ["", f"## {number}. Routing paths across layers", ""]
    lines.append(
        "A token's top-1 path is its first (highest gate weight) expert in each of w consecutive MoE layers. "
        "Transitions are between top-1 experts; lift and information are measured against a shuffle of the "
        "tokens that keeps every expert's load. Path diversity is over the token ids seen at least m times "
        "(m = --min-count), observed and shuffled alike. Models whose engine stores expert ids without weights have no top-1 and only top-k "
        "path sets."
    )
    figures = metrics.get("figures", {})
    entries = _paths(metrics)
    if not entries:
        return [*lines, "", "No paths were computed."]
    lines += [
        "",
        "| model | adjacent layers: mean I bits (shuffled) | max lift | distinct top-1 paths / occurrences, w = 1 / all |",
    ]
    lines.append("|---|---|---:|---|")
    for slug, entry, p in entries:
        tr = p.get("transitions") or {}
        d1 = (tr.get("distances") or {}).get("1")
        mi = f"{_num(np.mean(d1['mi_bits']))} ({_num(np.mean(d1['mi_shuffled_bits']))})" if d1 else "–"
        lifts = [v for v in (d1 or {}).get("max_lift", []) if v is not None]
        win = p["diversity"].get("windows", {})
        shares = " / ".join(
            _num(
                (win.get(n) or {}).get("top1", {}).get("distinct_share")
                if (win.get(n) or {}).get("top1")
                else None
            )
            for n in ("1", "all")
        )
        lines.append(
            f"| `{_label(slug, entry)}` | {mi} | {_num(max(lifts), 2) if lifts else '–'} | {shares} |"
        )
    shown = [slug for slug, _, _ in entries if f"paths-transitions-{slug}" in figures]
    if shown:
        lines += ["", FIGURE_SENTENCES["transitions"]]
        lines += [f"\n![path transitions {slug}]({figures[f'paths-transitions-{slug}']})" for slug in shown]
    agreed = [(s, e, p["agreement"]) for s, e, p in entries if p.get("agreement")]
    if agreed:
        lines += ["", "### Sense-pair path agreement", ""]
        lines += [
            "| model | w | same | different | Δ [95% CI] | p | " + " | ".join(CONTROL_NAMES) + " | survives |"
        ]
        lines.append("|---|---|---:|---:|---|---:|" + "---|" * len(CONTROL_NAMES) + "---|")
        for slug, entry, ag in agreed:
            for name, block in ag["windows"].items():
                controls = " | ".join(_ci(block["controls"].get(c, {}).get("delta")) for c in CONTROL_NAMES)
                lines.append(
                    f"| `{_label(slug, entry)}` | {name} | {_num(block['same'])} | {_num(block['different'])} "
                    f"| {_ci(block['delta'])} | {_num(block['delta'].get('p_value'), 3)} | {controls} "
                    f"| {'yes' if block['survives'] else 'no'} |"
                )
        if "paths-agreement" in figures:
            lines += [
                "",
                FIGURE_SENTENCES["agreement"],
                "",
                f"![path agreement]({figures['paths-agreement']})",
            ]
    entropies = [(s, e, p["sense_entropy"]) for s, e, p in entries if p.get("sense_entropy")]
    if entropies:
        lines += ["", "### What the sense adds to the token id", ""]
        lines += [
            "| model | w | H(path given token) | H(path given token, sense) | gain bits | null mean / 95th pct. | p |"
        ]
        lines.append("|---|---|---:|---:|---:|---|---:|")
        for slug, entry, se in entropies:
            for name, block in se["windows"].items():
                lines.append(
                    f"| `{_label(slug, entry)}` | {name} | {_num(block['h_path_given_token_bits'])} "
                    f"| {_num(block['h_path_given_token_sense_bits'])} | {_num(block['gain_bits'])} "
                    f"| {_num(block['null_mean_bits'])} / {_num(block['null_q95_bits'])} | {_num(block['p_value'], 3)} |"
                )
    if "paths-diversity" in figures:
        lines += ["", FIGURE_SENTENCES["diversity"], "", f"![path diversity]({figures['paths-diversity']})"]
    return lines
