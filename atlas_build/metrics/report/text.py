"""The report's words: plain JSON values, numbers and intervals as printed, the verdict sentences, the
share each control explains, provenance lines and the dataset card's summary (`summarize`)."""

from __future__ import annotations

import math

import numpy as np

from atlas_build.metrics.calibration.report import calibration_card_lines
from atlas_build.metrics.controls.regression import CONTROL_NAMES

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
    "position": "position",
    "neighbours": "neighbours",
    "null_model": "over null model",
    "hidden_state": "router-input geometry",
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


def _share(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def explained_lines(metrics: dict) -> list[str]:
    """How much of the raw Δκ each control explains (`sense_pairs.explained`): a table per model."""
    rows = [
        (slug, e) for slug, e in metrics["models"].items() if (e.get("sense_pairs") or {}).get("explained")
    ]
    if not rows:
        return []
    names = [
        n for n in CONTROL_NAMES if any(n in e["sense_pairs"]["explained"]["share_removed"] for _, e in rows)
    ]
    lines = [
        "",
        "### How much of the raw effect each control explains",
        "",
        "Share of the raw Δκ a control removes, (raw − control) / raw: of the layer-mean Δκ, and in brackets "
        "the mean of the per-layer shares over the layers whose raw CI excludes 0 (100%: all of it; above "
        "100%: the sign reverses; negative: the control's Δκ is larger). Point estimates: read them with "
        "the controls' CIs above; a share of a raw Δκ whose CI contains 0 means little.",
        "",
        "| model | raw Δκ | " + " | ".join(CONTROL_LABELS[n] for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for slug, entry in rows:
        ex = entry["sense_pairs"]["explained"]
        raw = _ci(entry["sense_pairs"]["layer_mean"]["delta"]) + (
            "" if ex["raw_ci_excludes_0"] else " (CI ∋ 0)"
        )
        cells = [
            f"{_share(ex['share_removed'].get(n))} ({_share(ex['share_removed_per_layer_mean'].get(n))})"
            for n in names
        ]
        lines.append(f"| {_label(slug, entry)} | {raw} | " + " | ".join(cells) + " |")
    return lines


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
        "cluster-bootstrap CIs over lemmas, raw and under each control (context words, token identity, target "
        "position, left and right neighbours, a random-init null model, all at once).",
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
    lines += calibration_card_lines(metrics.get("calibration"))
    prov = metrics.get("provenance")
    if prov and not prov.get("verified"):
        lines += ["", f"**{prov['verification']}**"]
    if not any(e.get("traces") for e in metrics["models"].values()):
        lines += ["", "No reasoning traces in this atlas."]
    return "\n".join(lines) + "\n"


# ---- everything ------------------------------------------------------------------------------------------
