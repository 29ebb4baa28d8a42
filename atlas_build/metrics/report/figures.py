"""The report's figures (matplotlib, Agg): κ per layer under the controls, co-activation lift, scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas_build.metrics.report.text import CONTROL_LABELS, _label

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
        sp = entry["sense_pairs"]
        x = sp.get("sense_layers") or entry["model"]["moe_layers"]  # hash layers left out by default
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
