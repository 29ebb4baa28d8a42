"""Which effects survive the controls (per layer and for the layer mean), and the scale rows (Δκ against size)."""

from __future__ import annotations

import math

import numpy as np


def _sign(iv: dict | None) -> int | None:
    if iv is None or iv.get("ci_low") is None:
        return None
    low, high = iv["ci_low"], iv["ci_high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return 1 if low > 0 else -1 if high < 0 else 0


_WORD = {1: "positive", -1: "negative", 0: "none", None: "untested"}


def _layer_signs(block: dict | None, n_layers: int) -> list[int | None]:
    if not block:
        return [None] * n_layers
    return [
        _sign({"ci_low": lo, "ci_high": hi}) for lo, hi in zip(block["ci_low"], block["ci_high"], strict=True)
    ]


def survival(sp: dict, moe_layers: list[int], random_init: bool) -> dict:
    """Which effects survive the controls: the raw CI excludes 0 and so does every applicable control's, with
    the same sign; for the layer mean and per layer (a control without per-layer values, e.g. a null model
    with other layer counts, counts with its layer-mean sign at every layer)."""
    controls = sp.get("controls") or {}
    n_layers = len(moe_layers)
    raw = _sign(sp["layer_mean"]["delta"])
    raw_l = _layer_signs(sp["delta"], n_layers)
    signs, layer_signs = {}, {}
    for name, result in controls.items():
        mean = (result.get("layer_mean") or {}).get("delta")
        signs[name] = _sign(mean)
        layer_signs[name] = (
            _layer_signs(result["delta"], n_layers) if result.get("delta") else [signs[name]] * n_layers
        )
    survives = bool(raw) and all(sign == raw for sign in signs.values())
    layers = [
        layer
        for i, layer in enumerate(moe_layers)
        if raw_l[i] and all(layer_signs[name][i] == raw_l[i] for name in controls)
    ]
    null = controls.get("null_model")
    removed_by = [name for name, sign in signs.items() if raw and sign != raw]
    return {
        "raw": _WORD[raw],
        "controls": {name: _WORD[sign] for name, sign in signs.items()},
        "per_layer": {
            "raw": [_WORD[x] for x in raw_l],
            **{name: [_WORD[x] for x in v] for name, v in layer_signs.items()},
        },
        "removed_by": removed_by,
        "context_adjusted": _WORD[signs.get("context_words")],
        "over_null": _WORD[signs["null_model"]] if null else "no null model in atlas",
        "layer_mean_survives": survives,
        "null_tested": bool(null),
        "layers": layers,
        "random_init": random_init,
    }


def explained(sp: dict) -> dict:
    """How much of the raw effect each control explains: share removed = (Δκ_raw − Δκ_control) / Δκ_raw of
    the layer-mean Δκ (1: the control removes it all, 0: nothing, < 0: the control's Δκ is larger, > 1: it
    reverses the sign); per layer the same share, and its mean over the layers where the raw per-layer CI
    excludes 0. Point estimates; read them with the controls' CIs. None where undefined (raw Δκ = 0)."""
    raw = sp["layer_mean"]["delta"]["estimate"]
    raw_layers = np.asarray(sp["delta"]["estimate"], dtype=np.float64)
    significant = np.array([s not in (0, None) for s in _layer_signs(sp["delta"], len(raw_layers))], bool)
    out: dict = {
        "basis": "share of the raw layer-mean Δκ removed: (raw − control) / raw",
        "raw_layer_mean": raw,
        "raw_ci_excludes_0": _sign(sp["layer_mean"]["delta"]) not in (0, None),
        "share_removed": {},
        "share_removed_per_layer_mean": {},
    }
    for name, control in (sp.get("controls") or {}).items():
        mean = (control.get("layer_mean") or {}).get("delta")
        share = None
        if mean is not None and raw and math.isfinite(raw) and mean.get("estimate") is not None:
            share = (raw - mean["estimate"]) / raw
        out["share_removed"][name] = share
        per_layer = None
        delta = control.get("delta")
        if delta is not None and significant.any():
            est = np.asarray(delta["estimate"], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                shares = (raw_layers - est) / raw_layers
            per_layer = float(np.mean(shares[significant]))
        out["share_removed_per_layer_mean"][name] = per_layer
    return out


def peak(sp: dict, moe_layers: list[int]) -> dict | None:
    delta = np.asarray(sp["delta"]["estimate"], dtype=np.float64)
    if not len(delta) or not np.isfinite(delta).any():
        return None
    i = int(np.nanargmax(delta))
    return {
        "layer_index": i,
        "layer": int(moe_layers[i]),
        "delta": float(delta[i]),
        "ci_low": float(sp["delta"]["ci_low"][i]),
        "ci_high": float(sp["delta"]["ci_high"][i]),
    }


def scale_rows(models: dict) -> list[dict]:
    """Per model: size against the layer-averaged and peak Δκ (the scale figure's data)."""
    out = []
    for slug, entry in models.items():
        sp = entry.get("sense_pairs")
        if not sp:
            continue
        out.append(
            {
                "model_slug": slug,
                "total_params": entry["model"]["total_params"],
                "active_params": entry["model"]["active_params"],
                "random_init": entry["random_init"],
                "synthetic": entry["synthetic"],
                "delta_layer_mean": sp["layer_mean"]["delta"],
                "delta_peak": sp["peak"],
            }
        )
    return out
