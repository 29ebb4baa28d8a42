"""The calibration summary (`metrics.json["calibration"]`, metrics/calibration/matrix.py) as markdown: for the
report, `calibration.md` and (short) the dataset card."""

from __future__ import annotations

import math


def _n(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _iv(iv: dict | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "–"
    return f"{_n(iv['estimate'])} [{_n(iv['ci_low'])}, {_n(iv['ci_high'])}]"


def _layers(values: list) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _cell(cell: dict) -> str:
    words = ["removes" if cell["removes"] else "**under**"]
    if cell["under_corrects_at"]:
        words.append(f"above 0 at {_layers(cell['under_corrects_at'])}")
    words.append("keeps" if cell["keeps"] else "**loses sense**")
    if cell["over_corrects_at"]:
        words.append(f"**over** at {_layers(cell['over_corrects_at'])}")
    return "; ".join(words)


def verdict(summary: dict) -> str:
    """One line: does the calibration pass, and where does it not."""
    failed = [name for name, c in summary["matrix"]["confounds"].items() if not c["passed"]]
    fpr = {n: c["above_nominal_at"] for n, c in summary["false_positive_rate"]["controls"].items()}
    high = [f"{n} (layers {_layers(v)})" for n, v in fpr.items() if v]
    parts = [
        "every confound removed by its control and by `all`, the sense effect kept"
        if not failed
        else "confounds NOT handled: " + ", ".join(failed),
        "false-positive rates within their nominal level"
        if not high
        else "false-positive rate above nominal: " + ", ".join(high),
    ]
    return "; ".join(parts)


def calibration_lines(summary: dict | None, heading: str = "##") -> list[str]:
    """The calibration section: what was planted, the plant × control matrix, false-positive rates, power."""
    if not summary:
        return []
    m, fpr, pw = summary["matrix"], summary["false_positive_rate"], summary["power"]
    o = summary["options"]
    names = [n for n in next(iter(m["confounds"].values()))["cells"]] if m["confounds"] else []
    lines = [
        "",
        f"{heading} Calibration of the controls on planted truth (model `{summary['model']}`)",
        "",
        f"PLANTED routing (on noise), not a model's, over this atlas's own {summary['n_pairs']} sense pairs "
        f"({summary['n_lemmas']} lemmas) and their token identity; atlas manifest sha256 "
        f"`{summary['manifest_sha256']}`. Confounds at q_c = {o['confound_strength']} with a sense-specific "
        f"phrasing ρ = {o['phrasing']}, a sense effect q_s = {o['sense_strength']} at layers "
        f"{_layers(m['sense_layers'])}; {o['seeds']} noise replicates, {o['n_resamples']} bootstrap "
        f"resamples per fit. **Verdict:** {verdict(summary)}.",
        "",
        "Plant × control: *removes* = the layer-mean CI of the confound alone does not lie above 0 (*above 0 "
        "at*: layers where it does); *keeps* = CI > 0 at every sense layer with the confound present; *over* "
        "= CI below the true sense effect.",
        "",
        "| confound (routing follows) | raw Δκ of the confound alone | strength (CI half-widths) | "
        + " | ".join(f"`{n}`" for n in names if n != "raw")
        + " | passed |",
        "|---|---|---:|" + "---|" * (len([n for n in names if n != "raw"]) + 1),
    ]
    for name, c in m["confounds"].items():
        cells = [
            (_cell(c["cells"][n]) if n in c["cells"] else "–") + (" ←" if n == c["removed_by"] else "")
            for n in names
            if n != "raw"
        ]
        lines.append(
            f"| {name}: {c['follows']} | {_iv(c['raw_layer_mean'])} | {_n(c['raw_strength_in_half_widths'], 1)} "
            "| " + " | ".join(cells) + f" | {'yes' if c['passed'] else '**no**'} |"
        )
    lines += [
        "",
        f"False-positive rate under pure noise (share of {fpr['n_replicates']} replicates whose 95% CI excludes "
        f"0; nominal {_n(fpr['nominal'], 2)}), per layer {_layers(fpr['layers'])} and for the layer mean:",
        "",
        "| control | per layer | layer mean | above nominal (binomial p < 0.01) |",
        "|---|---|---:|---|",
    ]
    for name, c in fpr["controls"].items():
        lines.append(
            f"| `{name}` | {' / '.join(_n(v, 2) for v in c['per_layer'])} | {_n(c['layer_mean'], 2)} | "
            f"{_layers(c['above_nominal_at'])} |"
        )
    lines += [
        "",
        "Power: the smallest planted sense effect (q_s, and the raw Δκ it plants) each control detects (CI > 0 at "
        f"it and every larger q_s of {', '.join(str(q) for q in pw['strengths'])}), per layer:",
        "",
        "| control | " + " | ".join(f"layer {layer}" for layer in pw["layers"]) + " |",
        "|---|" + "---|" * len(pw["layers"]),
    ]
    for name, c in pw["controls"].items():
        cells = [
            "not detected" if q is None else f"q {q} (Δκ {_n(d)})"
            for q, d in zip(c["min_strength"], c["min_delta_kappa"], strict=True)
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def calibration_card_lines(summary: dict | None) -> list[str]:
    """Two lines for the dataset card: the verdict and what it was run on."""
    if not summary:
        return []
    return [
        "",
        f"Calibration of the controls on planted truth (model `{summary['model']}`, this atlas's "
        f"{summary['n_pairs']} sense pairs, manifest sha256 `{(summary['manifest_sha256'] or '?')[:12]}…`): "
        f"{verdict(summary)}. Details: metrics.json `calibration` and report.md.",
    ]
