"""Top-1 transitions between MoE layers l and l + d: counts, lift against a load-preserving shuffle (the
rows of layer l + d permuted across tokens: both layers keep their loads, only the link between them
breaks) and the mutual information I(l; l + d), observed and shuffled (see `FORMULAS["path_transitions"]`).
"""

from __future__ import annotations

import numpy as np

from atlas_build.metrics.paths.arrays import window_starts

DISTANCES = (1, 2, 4)
# Layer pairs per distance d > 1 (d = 1: every adjacent pair), evenly spaced.
MAX_DISTANT_PAIRS = 8
# Transitions reported per layer pair (highest lift among cells with enough support).
TOP_TRANSITIONS = 3


def transition_counts(
    top1: np.ndarray, lo: int, hi: int, n_experts: int, shuffled_rows: np.ndarray | None = None
):
    """C `[N, N]`: tokens with top-1 e' at layer `lo` and e at layer `hi` of layer-major `top1` `[L, T]`
    (layer `hi`'s tokens permuted by `shuffled_rows` when given)."""
    a = top1[lo].astype(np.intp)
    b = top1[hi] if shuffled_rows is None else top1[hi][shuffled_rows]
    codes = a * n_experts + b.astype(np.intp)
    return np.bincount(codes, minlength=n_experts * n_experts).reshape(n_experts, n_experts)


def mutual_information_bits(counts: np.ndarray) -> float:
    """I = Σ p(x, y) log2(p(x, y) / (p(x) p(y))) of a contingency table (plug-in)."""
    c = counts.astype(np.float64)
    total = c.sum()
    if total <= 0:
        return float("nan")
    rows, cols = c.sum(axis=1, keepdims=True), c.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(c > 0, c * np.log2(c * total / (rows * cols)), 0.0)
    return float(terms.sum() / total)


def lift(counts: np.ndarray) -> np.ndarray:
    """C[e', e] · T / (C[e', ·] C[·, e]): 1 where the two layers are independent (NaN without support)."""
    c = counts.astype(np.float64)
    expected = c.sum(axis=1, keepdims=True) * c.sum(axis=0, keepdims=True) / max(c.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, c / expected, np.nan)


def transitions(top1: np.ndarray, n_experts: int, moe_layers: list[int], min_count: int, seed: int):
    """Top-1 transitions between layers l and l+d of layer-major `top1` `[L, T]`: every adjacent pair, and
    up to `MAX_DISTANT_PAIRS` evenly spaced pairs per d > 1; also the d = 1 counts `[L-1, N, N]`."""
    n_layers, n = top1.shape
    shuffled_rows = np.random.default_rng(seed).permutation(n)
    out: dict = {"basis": "top-1", "distances": {}}
    adjacent = np.zeros((max(n_layers - 1, 0), n_experts, n_experts), dtype=np.int32)
    for d in DISTANCES:
        if d >= n_layers:
            continue
        block: dict = {"from_layers": [], "to_layers": [], "mi_bits": [], "mi_shuffled_bits": []}
        block.update({"max_lift": [], "top": []})
        los = range(n_layers - d) if d == 1 else window_starts(n_layers, d + 1, MAX_DISTANT_PAIRS)
        for lo in los:
            counts = transition_counts(top1, lo, lo + d, n_experts)
            shuffled = transition_counts(top1, lo, lo + d, n_experts, shuffled_rows=shuffled_rows)
            if d == 1:
                adjacent[lo] = counts
            block["from_layers"].append(int(moe_layers[lo]))
            block["to_layers"].append(int(moe_layers[lo + d]))
            block["mi_bits"].append(mutual_information_bits(counts))
            block["mi_shuffled_bits"].append(mutual_information_bits(shuffled))
            ratio = lift(counts)
            expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / max(n, 1)
            supported = np.where((counts >= min_count) & (expected >= min_count), ratio, -np.inf).ravel()
            best = np.argpartition(-supported, min(TOP_TRANSITIONS, len(supported) - 1))[:TOP_TRANSITIONS]
            best = best[np.argsort(-supported[best], kind="stable")]
            rows = counts.sum(axis=1)
            top = [
                {
                    "from": int(b // n_experts),
                    "to": int(b % n_experts),
                    "p": float(counts.flat[b] / rows[b // n_experts]),
                    "lift": float(supported[b]),
                    "count": int(counts.flat[b]),
                }
                for b in best
                if np.isfinite(supported[b])
            ]
            block["top"].append(top)
            block["max_lift"].append(top[0]["lift"] if top else None)
        out["distances"][str(d)] = block
    return out, adjacent
