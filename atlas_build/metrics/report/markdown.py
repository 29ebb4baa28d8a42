"""Writing the metrics: `metrics.json`, co-activation arrays, PNG figures, `report.md`, and `summarize`.

(Over 500 lines: one `report.md` renderer section by section, each next to its figure, so that the
words and the numbers they describe are read together; paths and scores have their own report modules.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from atlas_build.metrics.compute import FORMULAS, MetricsResult
from atlas_build.metrics.controls.regression import CONTROL_NAMES
from atlas_build.metrics.paths.report import path_figures, path_section
from atlas_build.metrics.scores.report import score_figures, score_section

METRICS_JSON = "metrics.json"
REPORT_MD = "report.md"
KAPPA_FIGURE = "kappa-layers.png"
SCALE_FIGURE = "scale.png"


# ---- JSON ------------------------------------------------------------------------------------------------


def to_json(value):
    """Plain JSON values: arrays -> lists, floats to 6 significant digits, NaN/inf -> null."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


# ---- formatting ------------------------------------------------------------------------------------------


def _num(x, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(iv: dict | None, digits: int = 3, signed: bool = True) -> str:
    """`est [low, high]`, with enough decimals to resolve the interval's width."""
    if not iv:
        return "–"
    low, high = iv.get("ci_low"), iv.get("ci_high")
    if low is not None and high is not None and high > low:
        digits = max(digits, min(6, 1 - math.floor(math.log10(high - low))))
    est = _num(iv.get("estimate"), digits, signed)
    return f"{est} [{_num(low, digits, signed)}, {_num(high, digits, signed)}]"


format_interval = _ci


def format_p(p: float | None, interval: list[float] | None = None) -> str:
    """A Monte Carlo p-value to the digits its exact-binomial interval supports (`0.02`, `< 0.004`)."""
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "–"
    if not interval or interval[0] is None or interval[1] is None:
        return f"{p:.2g}"
    low, high = interval
    if low <= 0:
        return f"< {_round_up(high)}"
    width = high - low
    digits = max(1, -math.floor(math.log10(width))) if width > 0 else 4
    return f"{p:.{digits}f}"


def _round_up(x: float) -> str:
    """`x` rounded up to one significant digit (an upper bound stays an upper bound)."""
    if x <= 0:
        return "0"
    exponent = math.floor(math.log10(x))
    step = 10.0**exponent
    value = math.ceil(x / step - 1e-9) * step
    return f"{value:.{max(0, -exponent)}f}"


CONTROL_LABELS = {
    "context_words": "context words",
    "token_identity": "token identity",
    "null_model": "over null model",
    "all": "all controls",
}


def _at(iv: dict | None, i: int) -> dict | None:
    if not iv:
        return None
    return {k: (iv[k][i] if isinstance(iv.get(k), list) else None) for k in ("estimate", "ci_low", "ci_high")}


def _label(slug: str, entry: dict) -> str:
    tags = []
    if entry.get("random_init"):
        tags.append("RANDOM-INIT")
    if entry.get("synthetic"):
        tags.append("SYNTHETIC")
    return f"`{slug}`" + (f" ({', '.join(tags)})" if tags else "")


def _warnings(metrics: dict) -> list[str]:
    out = []
    if metrics.get("synthetic"):
        out.append(
            "> **SYNTHETIC DATA.** This atlas (or a model in it) is synthetic: generated routing and/or texts, "
            "not a real model on real sentences. The numbers test the pipeline; they are not findings."
        )
    if metrics.get("random_init_models"):
        names = ", ".join(f"`{s}`" for s in metrics["random_init_models"])
        out.append(
            f"> **RANDOM-INIT MODEL(S): {names}.** Random (seeded) weights, not trained: their routing is a "
            "null model. Every number from them is labelled RANDOM-INIT and says nothing about how a trained "
            "model routes."
        )
    return out


def _controls_text(sp: dict) -> str:
    parts = []
    for name, control in (sp.get("controls") or {}).items():
        label = CONTROL_LABELS.get(name, name)
        if control.get("null_model") and name == "null_model":
            label += f" `{control['null_model']}`"
        if control.get("error"):
            parts.append(f"{label}: not computed ({control['error']})")
        else:
            parts.append(f"{label}: {_ci(control['layer_mean']['delta'])}")
    return "; ".join(parts)


def _statement(slug: str, entry: dict) -> str:
    sp = entry.get("sense_pairs")
    if not sp:
        return f"- {_label(slug, entry)}: no sense pairs were measured."
    sv = sp["survives"]
    raw = sp["layer_mean"]["delta"]
    text = (
        f"- {_label(slug, entry)}: raw Δκ (layer mean) = {_ci(raw)}, permutation p = "
        f"{format_p(raw.get('p_value'), raw.get('p_value_interval'))}; {_controls_text(sp)}. "
    )
    removed = [CONTROL_LABELS.get(n, n) for n in sv.get("removed_by", [])]
    if sv["raw"] == "none":
        text += "No same-versus-different-sense effect: the raw CI contains 0."
    elif sv["layer_mean_survives"]:
        text += "**The layer-mean effect survives every control**" + (
            "" if sv["null_tested"] else " (no null model in the atlas: not tested against one)"
        )
    else:
        text += (
            f"**The layer-mean effect does not survive: {', '.join(removed) or 'a control'} remove(s) it**"
        )
    if sv["raw"] != "none":
        layers = sv["layers"]
        text += f"; decoder layers where it survives every control: {', '.join(map(str, layers)) if layers else 'none'}."
    if entry.get("random_init"):
        text += (
            " **This model is random-init: it has learned nothing, so its raw effect comes from architecture, "
            "tokenisation and shared context; any effect that survived every control here would mean a control "
            "that leaks.**"
        )
    return text


# ---- figures ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _band(ax, x, iv, label, color):
    est = np.array([np.nan if v is None else v for v in iv["estimate"]], dtype=float)
    lo = np.array([np.nan if v is None else v for v in iv["ci_low"]], dtype=float)
    hi = np.array([np.nan if v is None else v for v in iv["ci_high"]], dtype=float)
    ax.plot(x, est, marker="o", ms=3, color=color, label=label)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)


def plot_kappa_layers(metrics: dict, path: Path) -> bool:
    entries = [(s, e) for s, e in metrics["models"].items() if e.get("sense_pairs")]
    if not entries:
        return False
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 3.2 * len(entries))
    axes = fig.subplots(len(entries), 2, squeeze=False)
    for (slug, entry), (left, right) in zip(entries, axes, strict=True):
        sp, x = entry["sense_pairs"], entry["model"]["moe_layers"]
        _band(left, x, sp["kappa_same"], "same sense", "tab:blue")
        _band(left, x, sp["kappa_different"], "different sense", "tab:orange")
        left.set_ylabel("mean κ")
        left.set_title(f"{_label(slug, entry).replace('`', '')}: κ at the target")
        _band(right, x, sp["delta"], "Δκ raw", "black")
        colours = {"context_words": "tab:green", "token_identity": "tab:purple", "null_model": "tab:red"}
        colours["all"] = "tab:brown"
        for name, control in (sp.get("controls") or {}).items():
            if control.get("delta"):
                label = CONTROL_LABELS.get(name, name)
                if name == "null_model":
                    label = f"over null ({control['null_model']})"
                _band(right, x, control["delta"], label, colours.get(name, "tab:grey"))
        right.axhline(0, color="grey", lw=0.8)
        right.set_ylabel("same − different")
        right.set_title("Δκ raw and under every control (95% cluster-bootstrap CI)")
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("decoder layer (MoE layers only)")
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return True


def plot_coactivation(slug: str, entry: dict, counts: np.ndarray, n_tokens: int, path: Path) -> bool:
    """Heatmaps of log2 lift(i, j) = log2(P(E_j | E_i) / P(E_j)) for up to four layers (0 = independent)."""
    n_layers = counts.shape[0]
    picks = sorted(set(np.linspace(0, n_layers - 1, min(4, n_layers)).round().astype(int).tolist()))
    fig = _figure(3.6 * len(picks) + 0.8, 3.6)
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    layers = entry["model"]["moe_layers"]
    image = None
    for ax, i in zip(axes, picks, strict=True):
        c = counts[i].astype(np.float64)
        diag = np.diagonal(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.log2(c * max(n_tokens, 1) / np.outer(diag, diag))
        lift[~np.isfinite(lift)] = np.nan
        np.fill_diagonal(lift, np.nan)
        image = ax.imshow(lift, vmin=-2, vmax=2, cmap="RdBu_r", interpolation="nearest")
        ax.set_title(f"layer {layers[i]}: H = {entry['experts']['entropy'][i]:.3f}", fontsize=9)
        ax.set_xlabel("expert j")
        ax.set_ylabel("expert i")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="log2 P(E_j | E_i) / P(E_j)")
    fig.suptitle(f"{_label(slug, entry).replace('`', '')}: co-activation lift (0 = independent)", fontsize=10)
    fig.savefig(path, dpi=110)
    return True


def plot_scale(metrics: dict, path: Path) -> bool:
    rows = metrics.get("scale") or []
    if not rows:
        return False
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, key, name in zip(axes, ("total_params", "active_params"), ("total", "active"), strict=True):
        xs = [r[key] or 0 for r in rows]
        log_x = all(x > 0 for x in xs)
        for r, x in zip(rows, xs, strict=True):
            mean = r["delta_layer_mean"]
            filled = not r["random_init"]
            est, lo, hi = (mean.get(k) for k in ("estimate", "ci_low", "ci_high"))
            if est is None:
                continue
            # A bootstrap interval need not contain its estimate (few clusters): errorbar needs >= 0.
            err = [[max(est - lo, 0) if lo is not None else 0], [max(hi - est, 0) if hi is not None else 0]]
            ax.errorbar(
                [x],
                [est],
                yerr=err,
                fmt="o",
                color="tab:blue",
                mfc="tab:blue" if filled else "white",
                capsize=3,
            )
            if r.get("delta_peak"):
                ax.plot(
                    [x],
                    [r["delta_peak"]["delta"]],
                    "^",
                    color="tab:red",
                    mfc="tab:red" if filled else "white",
                )
            tag = " (random-init)" if r["random_init"] else ""
            ax.annotate(
                r["model_slug"] + tag, (x, est), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        if log_x:
            ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"{name} parameters" + ("" if log_x else " (linear axis: some sizes unknown)"))
        ax.set_ylabel("Δκ same − different")
        ax.set_title(
            f"Δκ vs {name} parameters (o: layer mean ± CI, ^: peak layer; hollow: random-init)", fontsize=8
        )
    fig.savefig(path, dpi=110)
    return True


# ---- report ----------------------------------------------------------------------------------------------


def user_corpora_lines(metrics: dict) -> list[str]:
    """The report's section on the user's corpora (wic, swords, jsonl): each corpus on its own, per model."""
    held = metrics.get("corpora") or {}
    if not held:
        return []
    lines = [
        "",
        "## Your own corpora",
        "",
        "The sense-pair and substitution metrics above, computed on each of your corpora separately (layer mean).",
        "",
        "| corpus | model | Δκ same − different [95% CI] | pairs same / diff | probe − MFS | substitution Δκ [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for kind in held:
        for slug, entry in metrics["models"].items():
            if kind not in (entry.get("corpora") or {}):
                lines.append(f"| {kind} | {_label(slug, entry)} | not routed by this model | – | – | – |")
                continue
            block = entry["corpora"][kind] or {}
            sp, probe, sub = block.get("sense_pairs"), block.get("probe"), block.get("substitutions")
            pairs = f"{sp['n_pairs']['same']} / {sp['n_pairs']['different']}" if sp else "–"
            sub_delta = _ci((sub.get("layer_mean") or {}).get("delta")) if sub else "–"
            lines.append(
                f"| {kind} | {_label(slug, entry)} | {_ci(sp['layer_mean']['delta']) if sp else '–'} | {pairs} "
                f"| {_ci(probe['difference']) if probe and probe.get('difference') else '–'} | {sub_delta} |"
            )
    return lines


def render_report(metrics: dict) -> str:
    """The full `report.md`: warnings, verdicts, formulas, one section per metric."""
    o = metrics["options"]
    lines = [f"# Routing metrics: `{metrics['source']}`", ""]
    lines += [w + "\n" for w in _warnings(metrics)]
    lines += [
        f"- revision: `{metrics.get('revision') or 'local / default'}`; target sub-token: **{o['target']}**; "
        f"{o['n_bootstrap']} bootstrap resamples, {o['n_permutations']} permutations, seed {o['seed']}, "
        f"token-id threshold m = {o['min_count']}",
        "- corpus rows: "
        + ", ".join(f"{k} {v if v is not None else 'absent'}" for k, v in metrics["corpus"].items()),
        "",
        "## Which effects survive the controls",
        "",
        "An effect survives when its 95% CI excludes 0 with the same sign raw and under every applicable "
        "control: the context-word overlap of the two sentences (`context_words`), the identity of the target "
        "tokens and their neighbours (`token_identity`), a random-init null model of the same architecture "
        "(`null_model`, when the atlas has one) and all of them at once (`all`). Same-sense examples share "
        "more context words and more often the same target tokens and neighbours than different-sense ones, "
        "and a random-init model already shows a positive raw Δκ: without these controls the raw number "
        "misleads. `atlas metrics calibrate DIR` checks the controls on planted copies of the atlas.",
        "",
    ]
    lines += [_statement(slug, entry) for slug, entry in metrics["models"].items()]
    lines += _provenance_lines(metrics)
    lines += ["", "## Formulas", ""] + [
        f"- **{k}**: {v}" for k, v in metrics.get("formulas", FORMULAS).items()
    ]
    lines += ["", "## 1. Sense-pair overlap at the target token", ""]
    names = list(CONTROL_NAMES)
    lines += [
        "| model | pairs same / diff | lemmas | κ same | κ different | Δκ raw [95% CI] | p | "
        + " | ".join(CONTROL_LABELS[n] for n in names)
        + " | survives |",
        "|---|---:|---:|---:|---:|---|---:|" + "---|" * len(names) + "---|",
    ]
    for slug, entry in metrics["models"].items():
        sp = entry.get("sense_pairs")
        if not sp:
            continue
        lm = sp["layer_mean"]
        controls = sp.get("controls") or {}
        cells = [_control_cell(controls.get(n)) for n in names]
        lines.append(
            f"| {_label(slug, entry)} | {sp['n_pairs']['same']} / {sp['n_pairs']['different']} | {sp['n_lemmas']} "
            f"| {_num(lm['kappa_same']['estimate'])} | {_num(lm['kappa_different']['estimate'])} | {_ci(lm['delta'])} "
            f"| {format_p(lm['delta'].get('p_value'), lm['delta'].get('p_value_interval'))} | "
            + " | ".join(cells)
            + f" | {_survives(entry)} |"
        )
    for slug, entry in metrics["models"].items():
        sp = entry.get("sense_pairs")
        if not sp:
            continue
        jac = sp["jaccard"]
        controls = sp.get("controls") or {}
        lines += [
            "",
            f"### {_label(slug, entry)} per layer",
            "",
            f"Context-word Jaccard: same-sense pairs {_num(jac['same'])}, different-sense pairs "
            f"{_num(jac['different'])}. Controls: "
            + "; ".join(f"`{n}`: {c['method']}" for n, c in controls.items())
            + ".",
            "",
            "| layer | κ same | κ different | Δκ raw [95% CI] | p | p (BH) | "
            + " | ".join(CONTROL_LABELS[n] for n in names)
            + " |",
            "|---:|---:|---:|---|---:|---:|" + "---|" * len(names),
        ]
        for i, layer in enumerate(entry["model"]["moe_layers"]):
            cells = [
                _ci(_at(controls[n]["delta"], i)) if controls.get(n) and controls[n].get("delta") else "–"
                for n in names
            ]
            interval = (sp["delta"].get("p_value_interval") or [None] * (i + 1))[i]
            lines.append(
                f"| {layer} | {_num(sp['kappa_same']['estimate'][i])} | {_num(sp['kappa_different']['estimate'][i])} "
                f"| {_ci(_at(sp['delta'], i))} | {format_p(sp['delta']['p_value'][i], interval)} "
                f"| {_num(sp['delta']['p_value_bh'][i], 3)} | " + " | ".join(cells) + " |"
            )
    if "kappa" in metrics.get("figures", {}):
        lines += ["", f"![per-layer κ]({metrics['figures']['kappa']})"]

    lines += ["", "## 2. Substitution overlap", ""]
    subs = [(s, e) for s, e in metrics["models"].items() if e.get("substitutions")]
    if not subs:
        lines.append(
            "No substitutions were measured (the atlas has no `substitutions` config or no routed rows)."
        )
    else:
        lines += [
            "κ between the base target and the substituted target (layer mean).",
            "",
            "| model | relation | n | mean κ [95% CI] |",
            "|---|---|---:|---|",
        ]
        for slug, entry in subs:
            sub = entry["substitutions"]
            for rel, n in sub["n"].items():
                lines.append(
                    f"| {_label(slug, entry)} | {rel} | {n} | {_ci(sub['layer_mean'].get(rel), signed=False)} |"
                )
            if sub.get("delta"):
                lines.append(
                    f"| {_label(slug, entry)} | synonym − other-sense | | {_ci(sub['layer_mean']['delta'])} |"
                )

    lines += user_corpora_lines(metrics)
    lines += [
        "",
        "## 3. Scale",
        "",
        "| model | total params | active params | Δκ layer mean | peak Δκ (layer) |",
    ]
    lines.append("|---|---:|---:|---|---|")
    for r in metrics.get("scale", []):
        peak = r.get("delta_peak")
        peak_text = f"{_num(peak['delta'], signed=True)} ({peak['layer']})" if peak else "–"
        label = f"`{r['model_slug']}`" + (" (RANDOM-INIT)" if r["random_init"] else "")
        lines.append(
            f"| {label} | {r['total_params']:,} | {r['active_params']:,} | {_ci(r['delta_layer_mean'])} | {peak_text} |"
        )
    if "scale" in metrics.get("figures", {}):
        lines += ["", f"![scale]({metrics['figures']['scale']})"]

    lines += ["", "## 4. Token-id specialisation", ""]
    for slug, entry in metrics["models"].items():
        ts = entry.get("token_specialisation")
        if not ts:
            continue
        # Id-only engines: no weights, so no top-1 (the stored ids are an unordered set).
        top1 = ts["top1"] or {"random": None, "share": [None] * len(ts["topk"]["share"]), "shuffled": None}
        top1["shuffled"] = top1["shuffled"] or top1["share"]
        lines += [
            f"### {_label(slug, entry)}",
            "",
            f"{ts['n_token_ids']} token ids with ≥ {ts['min_count']} occurrences ({ts['n_occurrences']} tokens). "
            f"Random baselines: top-1 1/N = {_num(top1['random'], 4)}, top-k k/N = {_num(ts['topk']['random'], 4)}. "
            "The shuffled baseline is the fair one (same loads, same counts)."
            + ("" if ts["top1"] else " No top-1: this engine stores expert ids without weights, as a set."),
            "",
            f"OLMoE's definition (labelled so; as in allenai/OLMoE's analysis scripts) averages over all "
            f"{(ts.get('olmoe') or {}).get('n_token_ids', '–')} token ids, "
            f"{(ts.get('olmoe') or {}).get('n_singletons', '–')} singletons included (a singleton's share is 1): "
            "compare published OLMoE figures with those columns, not ours.",
            "",
            "| layer | top-1 share | shuffled | top-k share | shuffled | OLMoE-def. top-1 | OLMoE-def. top-k |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        olmoe = ts.get("olmoe") or {}
        n_layers = len(entry["model"]["moe_layers"])
        o1 = olmoe.get("top1_share") or [None] * n_layers
        ok = olmoe.get("topk_share") or [None] * n_layers
        for i, layer in enumerate(entry["model"]["moe_layers"]):
            lines.append(
                f"| {layer} | {_num(top1['share'][i])} | {_num(top1['shuffled'][i])} "
                f"| {_num(ts['topk']['share'][i])} | {_num(ts['topk']['shuffled'][i])} | {_num(o1[i])} | {_num(ok[i])} |"
            )
        lines.append("")

    lines += ["", "## 5. Expert load, routing entropy, co-activation", ""]
    for slug, entry in metrics["models"].items():
        e = entry["experts"]
        co = e.get("coactivation") or {}
        base = co.get("baseline") or {}
        sim = co.get("simulated") or {}
        olmoe = co.get("olmoe") or {}
        grouped = base.get("n_group")
        lines += [
            f"### {_label(slug, entry)}",
            "",
            "Baseline: uniform routing under this router's constraints ("
            + (
                f"n_group {base['n_group']}, topk_group {base['topk_group']}: P0(E_j | E_i) = "
                f"{_num(base['same_group'], 4)} within a group, {_num(base['other_group'], 4)} across groups"
                if grouped
                else f"no groups: P0(E_j | E_i) = {_num(base.get('same_group'), 4)}"
            )
            + f"; unconstrained (k − 1)/(N − 1) = {_num(co.get('independent_baseline'), 4)}). The same routing "
            f"simulated with as many tokens: entropy {_num(sim.get('entropy'))}, max load / (1/N) "
            f"{_num(sim.get('max_load_ratio'), 2)}, max P {_num(sim.get('max_conditional'))}, max lift "
            f"{_num(sim.get('max_lift'), 2)}. Lift = P / P0. Full matrices: `{co.get('file', '–')}` (counts; "
            "P = C_ij / C_ii).",
            "",
            "| layer | entropy | max load / (1/N) | max P(E_j given E_i) | top pair | max lift (pair) | "
            "OLMoE-style mean P (rank-adjacent) | mean P (all pairs) |",
            "|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for i, layer in enumerate(entry["model"]["moe_layers"]):
            pairs = (co.get("top_pairs") or [[]] * (i + 1))[i]
            top = f"{pairs[0]['i']} → {pairs[0]['j']}" if pairs else "–"
            maxc = (co.get("max_conditional") or [None] * (i + 1))[i]
            lift_pairs = (co.get("top_pairs_lift") or [[]] * (i + 1))[i]
            lift = (
                f"{_num(lift_pairs[0]['lift'], 2)} ({lift_pairs[0]['i']} → {lift_pairs[0]['j']})"
                if lift_pairs
                else "–"
            )
            adj = (olmoe.get("mean_conditional") or [None] * (i + 1))[i]
            allp = (olmoe.get("mean_conditional_all_pairs") or [None] * (i + 1))[i]
            lines.append(
                f"| {layer} | {_num(e['entropy'][i])} | {_num(e['max_load_ratio'][i], 2)} | {_num(maxc)} | {top} "
                f"| {lift} | {_num(adj, 4)} | {_num(allp, 4)} |"
            )
        fig = metrics.get("figures", {}).get(f"coactivation-{slug}")
        if fig:
            lines += ["", f"![co-activation {slug}]({fig})"]
        lines.append("")

    lines += ["", "## 6. Reasoning traces", ""]
    traced = [(s, e) for s, e in metrics["models"].items() if e.get("traces")]
    if not traced:
        lines.append(
            "No reasoning traces in this atlas (no routing rows with corpus `traces`): the `traces` key is null."
        )
    for slug, entry in traced:
        tr = entry["traces"]
        lines += [
            f"### {_label(slug, entry)}",
            "",
            f"{tr['n_tokens']} trace tokens, {tr['n_marker_tokens']} marker tokens.",
        ]
        if tr.get("top_experts"):
            lines += [
                "",
                "| layer | top experts by nPMI with reasoning markers (expert: nPMI) |",
                "|---:|---|",
            ]
            for i, layer in enumerate(entry["model"]["moe_layers"]):
                tops = ", ".join(f"{t['expert']}: {_num(t['npmi'])}" for t in tr["top_experts"][i])
                lines.append(f"| {layer} | {tops} |")
        seg = tr.get("segments") or {}
        if seg.get("js_divergence_think_answer") is not None:
            js = seg["js_divergence_think_answer"]
            lines += ["", "JS divergence of the expert distributions, think vs answer, per layer: "]
            lines.append(
                ", ".join(
                    f"{layer}: {_num(v)}" for layer, v in zip(entry["model"]["moe_layers"], js, strict=True)
                )
            )
        lines.append("")

    lines += ["", "## 7. Routing-only sense probe, calibrated", ""]
    lines += [
        "The probe means routing carries sense only if it beats MFS, its own label-permutation null "
        "(same routing, sense labels permuted within each lemma) and the lexical nearest neighbours that see "
        "no routing (context words, token identity, both).",
        "",
        "| model | examples | lemmas | probe accuracy [95% CI] | MFS | probe − MFS | permutation null mean "
        "(p) | context-words NN | token-identity NN | lexical NN | probe − best lexical |",
        "|---|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    for slug, entry in metrics["models"].items():
        pr = entry.get("probe")
        if not pr or not pr.get("n_examples"):
            continue
        null = pr.get("null") or {}
        lex = pr.get("lexical") or {}
        null_text = (
            f"{_num(null.get('mean'))} (p {format_p(null.get('p_value'), null.get('p_value_interval'))})"
            if null
            else "–"
        )
        best = max(lex.items(), key=lambda kv: kv[1]["accuracy"]["estimate"], default=None)
        lines.append(
            f"| {_label(slug, entry)} | {pr['n_examples']} | {pr['n_lemmas']} | {_ci(pr['accuracy'], signed=False)} "
            f"| {_num(pr['mfs_accuracy']['estimate'])} | {_ci(pr['difference'])} | {null_text} | "
            + " | ".join(
                _num(lex[n]["accuracy"]["estimate"]) if n in lex else "–"
                for n in ("context_words", "token_identity", "lexical")
            )
            + f" | {_ci(best[1]['difference']) + ' (' + best[0] + ')' if best else '–'} |"
        )
    lines += path_section(metrics)  # routing paths across layers (metrics/paths/report.py)
    lines += score_section(metrics)  # router scores beyond the top-k (metrics/scores/report.py)
    if metrics.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in metrics["notes"]]
    return "\n".join(lines) + "\n"


def _control_cell(control: dict | None) -> str:
    if not control:
        return "–"
    if control.get("error"):
        return "not computed"
    return _ci(control["layer_mean"]["delta"])


def _survives(entry: dict) -> str:
    sv = entry["sense_pairs"]["survives"]
    if sv["layer_mean_survives"]:
        answer = "yes" if sv["null_tested"] else "yes (no null model)"
    elif sv["raw"] == "none":
        answer = "no raw effect"
    else:
        answer = "no: removed by " + ", ".join(sv.get("removed_by") or ["a control"])
    return answer + (" (RANDOM-INIT: must be no)" if entry.get("random_init") else "")


def _provenance_lines(metrics: dict) -> list[str]:
    prov = metrics.get("provenance")
    if not prov:
        return []
    checked = prov["verification"] if prov["verified"] else f"**{prov['verification']}**"
    return [
        "",
        "## Provenance",
        "",
        f"- manifest.json sha256 `{prov['manifest_sha256']}` (atlas built by routing-atlas "
        f"`{prov.get('manifest_code_version')}`); {checked}",
        f"- metrics code: routing-atlas `{prov['code_version']}`; seeds: "
        + ", ".join(f"{k} {v}" for k, v in prov["seeds"].items()),
    ]


def summarize(metrics: dict) -> str:
    """A short markdown summary of `metrics.json` for the dataset card."""
    o = metrics["options"]
    names = list(CONTROL_NAMES)
    lines = ["### Routing metrics", ""]
    lines += [w + "\n" for w in _warnings(metrics)]
    lines += [
        f"Overlap of the top-k experts at the target token ({o['target']} sub-token), chance-corrected "
        "κ = (o − k²/N) / (k − k²/N); Δκ = same-sense − different-sense pairs, averaged over MoE layers, with 95% "
        "cluster-bootstrap CIs over lemmas, raw and under each control (context words, token identity, a "
        "random-init null model, all at once).",
        "",
        "| model | Δκ raw | " + " | ".join(CONTROL_LABELS[n] for n in names) + " | survives | probe / MFS / "
        "best lexical NN |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for slug, entry in metrics["models"].items():
        sp, pr = entry.get("sense_pairs"), entry.get("probe") or {}
        if not sp:
            continue
        controls = sp.get("controls") or {}
        probe = "–"
        if pr.get("accuracy"):
            lex = [v["accuracy"]["estimate"] for v in (pr.get("lexical") or {}).values()]
            probe = f"{_num(pr['accuracy']['estimate'])} / {_num(pr['mfs_accuracy']['estimate'])} / " + (
                _num(max(lex)) if lex else "–"
            )
        lines.append(
            f"| {_label(slug, entry)} | {_ci(sp['layer_mean']['delta'])} | "
            + " | ".join(_control_cell(controls.get(n)) for n in names)
            + f" | {_survives(entry)} | {probe} |"
        )
    prov = metrics.get("provenance")
    if prov and not prov.get("verified"):
        lines += ["", f"**{prov['verification']}**"]
    if not any(e.get("traces") for e in metrics["models"].values()):
        lines += ["", "No reasoning traces in this atlas."]
    return "\n".join(lines) + "\n"


# ---- everything ------------------------------------------------------------------------------------------


def write_outputs(result: MetricsResult, out_dir: Path) -> dict:
    """Write `metrics.json`, `coactivation-<slug>.npz`, the figures and `report.md` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics
    figures: dict[str, str] = {}
    for slug, arrays in result.arrays.items():
        entry = metrics["models"][slug]
        np.savez_compressed(
            out_dir / f"coactivation-{slug}.npz",
            moe_layers=np.asarray(entry["model"]["moe_layers"]),
            **arrays,
        )
    clean = to_json(metrics)
    if plot_kappa_layers(clean, out_dir / KAPPA_FIGURE):
        figures["kappa"] = KAPPA_FIGURE
    if plot_scale(clean, out_dir / SCALE_FIGURE):
        figures["scale"] = SCALE_FIGURE
    for slug, arrays in result.arrays.items():
        if "coactivation_counts" in arrays:
            name = f"coactivation-{slug}.png"
            entry = clean["models"][slug]
            plot_coactivation(slug, entry, arrays["coactivation_counts"], entry["n_tokens"], out_dir / name)
            figures[f"coactivation-{slug}"] = name
    figures.update(path_figures(clean, result.arrays, out_dir))  # routing paths (metrics/paths/report.py)
    figures.update(score_figures(clean, out_dir))  # router scores (metrics/scores/report.py)
    clean["figures"] = figures
    metrics["figures"] = figures
    (out_dir / METRICS_JSON).write_text(
        json.dumps(clean, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / REPORT_MD).write_text(render_report(clean), encoding="utf-8")
    return clean
