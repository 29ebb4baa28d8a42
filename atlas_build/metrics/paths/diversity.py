"""Path diversity per token id and the sense entropy gain on the sense targets (see `FORMULAS`)."""

from __future__ import annotations

import numpy as np

from atlas_build.metrics.estimators.stats import within_group_permutations
from atlas_build.metrics.paths.arrays import (
    MAX_SET_WINDOW_STARTS,
    mix64,
    widths,
    window_codes,
    window_starts,
)

# Permutations of the path nulls (entropy gain, agreement p-values): at most this many, so that the
# paths stay a fraction of the metrics' time and memory; a p-value's resolution is 1 / (R + 1).
MAX_PATH_PERMUTATIONS = 199
_CELLS_PER_CHUNK = 1 << 23


def _flogf(counts: np.ndarray) -> float:
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    return float((c * np.log(c)).sum())


def _grouped(rank: np.ndarray, codes: np.ndarray, exact: bool, n_ranks: int):
    """Distinct codes per rank and Σ n log n over (rank, code) cells, for rows with rank ≥ 0."""
    keep = rank >= 0
    r, c = rank[keep].astype(np.uint64), codes[keep]
    rank_bits = max(1, int(n_ranks).bit_length())
    code_bits = 64 - rank_bits
    if not (exact and (len(c) == 0 or int(c.max()) < (1 << code_bits))):
        c = mix64(c) >> np.uint64(rank_bits)
    keys = np.sort((r << np.uint64(code_bits)) | c)
    new = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    distinct = np.bincount((keys[new] >> np.uint64(code_bits)).astype(np.intp), minlength=n_ranks)
    runs = np.diff(np.r_[np.flatnonzero(new), len(keys)])
    return distinct, _flogf(runs)


def token_population(
    token_ids: np.ndarray, min_count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The one population of the diversity statistics: the rows whose token id occurs ≥ `min_count` times.

    Returns `(rank [T], shuffled [T], occurrences [V], n_seen)`: the dense rank of each row's token id
    among the frequent ids (−1: a row outside the population), the same ranks permuted over the
    population's rows only (each id keeps its count, each row its path: only the token -> path link
    breaks), the count of each frequent id, and how many distinct ids were seen at all.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    if not len(ids):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, 0
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    eligible = counts >= max(1, min_count)
    dense = np.cumsum(eligible) - 1
    rank = np.where(eligible[inverse], dense[inverse], -1)
    rows = np.flatnonzero(rank >= 0)
    shuffled = np.full(len(ids), -1, dtype=np.int64)
    shuffled[rows] = rank[rows][rng.permutation(len(rows))]
    return rank, shuffled, counts[eligible].astype(np.float64), int(len(counts))


def diversity(
    top1: np.ndarray | None,
    sets: np.ndarray | None,
    set_layers: list[int],
    token_ids: np.ndarray,
    n_experts: int,
    min_count: int,
    seed: int,
    n_layers: int | None = None,
) -> dict:
    """Distinct paths per token id and H(path | token id), per window width (see `FORMULAS`).

    Args:
        top1: layer-major top-1 ids `[L, T]`, or None (id-only engine).
        sets: top-k set codes `[len(set_layers), T]` of the MoE layers `set_layers`, or None.
        token_ids: `[T]`.
        n_layers: L (default: from `top1`).
    """
    rank, shuffled, occurrences, n_seen = token_population(
        token_ids, min_count, np.random.default_rng(seed + 11)
    )
    n_ranks, m = len(occurrences), float(occurrences.sum())
    n_layers = n_layers if n_layers is not None else top1.shape[0]
    out: dict = {
        "min_count": min_count,
        "population": f"the occurrences of the token ids seen at least {min_count} times (observed and "
        "shuffled alike)",
        "n_token_ids": n_ranks,
        "n_occurrences": int(m),
        "n_token_ids_seen": n_seen,
        "windows": {},
    }
    if not n_ranks:
        return out
    f_token = _flogf(occurrences)
    for name, width in widths(n_layers):
        block: dict = {"width": width}
        kinds = [("top1", top1, None)]
        if name != "all":  # top-k sets over every layer: every occurrence is distinct at atlas scale
            kinds.append(("topk", sets, set_layers))
        for kind, ids, layers in kinds:
            if ids is None:
                block[kind] = None
                continue
            starts = window_starts(n_layers, width)
            if kind == "topk":
                starts = window_starts(n_layers, width, MAX_SET_WINDOW_STARTS)
            stats = {"distinct": [], "distinct_shuffled": [], "h": [], "h_shuffled": []}
            for s in starts:
                if kind == "topk":
                    cols = [layers.index(x) for x in range(s, s + width)]
                    codes, exact = window_codes(ids[cols], 0, width, n_experts)
                else:
                    codes, exact = window_codes(ids, s, width, n_experts)
                # The shuffled-token baseline for top-1 paths only (one more sort per window).
                rankings = [("", rank)] + ([("_shuffled", shuffled)] if kind == "top1" else [])
                for suffix, ranking in rankings:
                    distinct, f_cells = _grouped(ranking, codes, exact, n_ranks)
                    stats["distinct" + suffix].append(float((distinct / occurrences).mean()))
                    # H(P | T) = H(T, P) − H(T) = (Σ f(n_t) − Σ f(n_tp)) / M, f(n) = n ln n.
                    stats["h" + suffix].append((f_token - f_cells) / m / np.log(2))
            block[kind] = {
                "layers_start": [int(s) for s in starts],
                "distinct_share": _mean(stats["distinct"]),
                "distinct_share_shuffled": _mean(stats["distinct_shuffled"]) if kind == "top1" else None,
                "h_path_given_token_bits": _mean(stats["h"]),
                "h_path_given_shuffled_token_bits": _mean(stats["h_shuffled"]) if kind == "top1" else None,
            }
        out["windows"][name] = block
    return out


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def sense_entropy(
    target_top1: np.ndarray,
    target_token: np.ndarray,
    sense: np.ndarray,
    n_experts: int,
    n_permutations: int,
    seed: int,
) -> dict:
    """gain = H(path | token id) − H(path | token id, sense) on target tokens, per window width, with a
    within-token-id permutation null of the senses (see `FORMULAS`)."""
    n, n_layers = target_top1.shape
    layer_major = np.ascontiguousarray(target_top1.T)
    t = np.unique(target_token, return_inverse=True)[1].reshape(-1).astype(np.int64)
    span = int(sense.max()) + 1 if n else 1
    combos, inverse = np.unique(t * span + sense, return_inverse=True)
    # Local sense codes within each token id (0, 1, ...), so that the cells stay dense.
    local = inverse.reshape(-1) - np.searchsorted(combos // span, t)
    n_local = int(local.max()) + 1 if n else 1
    r = min(n_permutations, MAX_PATH_PERMUTATIONS)
    rng = np.random.default_rng(seed + 21)
    permuted = within_group_permutations(local, t, r, rng) if r and n else np.zeros((0, n), np.int64)
    out: dict = {"n_targets": int(n), "n_token_ids": int(t.max()) + 1 if n else 0, "n_permutations": r}
    out["windows"] = {}
    f_ts = _flogf(np.bincount(t * n_local + local)) if n else 0.0
    f_t = _flogf(np.bincount(t)) if n else 0.0
    for name, width in widths(n_layers):
        gains, nulls, h_t, h_ts = [], [], [], []
        for s in window_starts(n_layers, width):
            codes, _ = window_codes(layer_major, s, width, n_experts)
            # (token id, path) cells: one 64-bit key per row (a hash: collisions are negligible here).
            tp = np.unique(mix64(codes ^ mix64(t.astype(np.uint64))), return_inverse=True)[1].reshape(-1)
            f_tp = _flogf(np.bincount(tp)) if n else 0.0
            f_tsp = _flogf(np.bincount(tp * n_local + local)) if n else 0.0
            h_t.append((f_t - f_tp) / n)
            h_ts.append((f_ts - f_tsp) / n)
            gains.append((f_tsp - f_tp - f_ts + f_t) / n)
            # Under a permutation only (token, path) cells of ≥ 2 rows can change their Σ n log n.
            sizes = np.bincount(tp) if n else np.zeros(0, np.int64)
            sub = np.flatnonzero(sizes[tp] >= 2) if n else np.zeros(0, np.int64)
            group = np.unique(tp[sub], return_inverse=True)[1].reshape(-1)
            cells = (int(group.max()) + 1 if len(group) else 0) * n_local
            null = np.full(r, (-f_tp - f_ts + f_t) / n)
            chunk = max(1, _CELLS_PER_CHUNK // max(cells, len(sub), 1))
            for lo in range(0, r if len(sub) else 0, chunk):
                block = permuted[lo : lo + chunk][:, sub]
                keys = (np.arange(len(block))[:, None] * cells + group[None, :] * n_local + block).ravel()
                c = np.bincount(keys, minlength=len(block) * cells).reshape(len(block), cells)
                c = c.astype(np.float64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    null[lo : lo + len(block)] += np.where(c > 0, c * np.log(c), 0.0).sum(axis=1) / n
            nulls.append(null)
        if not gains:
            continue
        gain = float(np.mean(gains)) / np.log(2)
        null_mean = np.mean(nulls, axis=0) / np.log(2) if r else np.zeros(0)
        out["windows"][name] = {
            "width": width,
            "h_path_given_token_bits": float(np.mean(h_t)) / np.log(2),
            "h_path_given_token_sense_bits": float(np.mean(h_ts)) / np.log(2),
            "gain_bits": gain,
            "null_mean_bits": float(null_mean.mean()) if r else None,
            "null_q95_bits": float(np.quantile(null_mean, 0.95)) if r else None,
            "p_value": float((1 + (null_mean >= gain - 1e-12).sum()) / (r + 1)) if r else None,
        }
    return out
