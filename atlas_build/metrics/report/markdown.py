"""Writing the metrics: `metrics.json`, co-activation arrays, PNG figures and `report.md`.

`render_report` renders `report.md` section by section; its words, numbers and the card's summary
(`summarize`) are in `text.py`, its figures in `figures.py`; paths, scores and the calibration have report
modules of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from atlas_build.metrics.calibration.report import calibration_lines
from atlas_build.metrics.compute import FORMULAS, MetricsResult
from atlas_build.metrics.controls.regression import CONTROL_NAMES
from atlas_build.metrics.paths.report import path_figures, path_section
from atlas_build.metrics.report.figures import plot_coactivation, plot_kappa_layers, plot_scale
from atlas_build.metrics.report.router_inputs import router_input_section
from atlas_build.metrics.report.text import (
    CONTROL_LABELS,
    _at,
    _ci,
    _control_cell,
    _label,
    _num,
    _provenance_lines,
    _statement,
    _survives,
    _warnings,
    explained_lines,
    format_interval,
    format_p,
    summarize,
    to_json,
)
from atlas_build.metrics.scores.report import score_figures, score_section

__all__ = [
    "METRICS_JSON",
    "REPORT_MD",
    "format_interval",
    "format_p",
    "render_report",
    "summarize",
    "to_json",
    "write_outputs",
]

METRICS_JSON = "metrics.json"
REPORT_MD = "report.md"
KAPPA_FIGURE = "kappa-layers.png"
SCALE_FIGURE = "scale.png"


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
        "tokens and their neighbours (`token_identity`), the targets' positions in their texts (`position`), "
        "their left and right neighbour tokens together (`neighbours`), a random-init null model of the same architecture "
        "(`null_model`, when the atlas has one) and all of them at once (`all`). Same-sense examples share "
        "more context words and more often the same target tokens and neighbours than different-sense ones, "
        "and a random-init model already shows a positive raw Δκ: without these controls the raw number "
        "misleads. `atlas metrics calibrate DIR` checks the controls on planted copies of the atlas.",
        "",
    ]
    lines += [_statement(slug, entry) for slug, entry in metrics["models"].items()]
    lines += explained_lines(metrics)
    lines += calibration_lines(metrics.get("calibration"), "###")
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
        hashed = sp.get("hash_layers_excluded") or []
        lines += [
            "",
            f"### {_label(slug, entry)} per layer",
            "",
            *(
                [
                    f"Decoder layers {hashed} route by a token-id hash table, not a learned router: their "
                    "experts are the token's table row, token identity by construction (a built-in "
                    "token-identity reference), so the sense metrics leave them out.",
                    "",
                ]
                if hashed
                else []
            ),
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
        for i, layer in enumerate(sp.get("sense_layers") or entry["model"]["moe_layers"]):
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
    lines += router_input_section(
        metrics
    )  # geometry control, predictability (metrics/report/router_inputs.py)
    if metrics.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in metrics["notes"]]
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
