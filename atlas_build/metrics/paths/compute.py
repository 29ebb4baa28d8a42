"""Routing paths across layers, from the dataset alone: transitions, path diversity, sense-pair agreement.

(Over 500 lines: the three path statistics share the layer-major arrays, the window sampling and the
forked worker that computes them in one pass.)

A token's *top-1 path* over a window of w consecutive MoE layers is the sequence of its first (highest
gate weight) experts in those layers; its *top-k path set* is the sequence of its top-k sets. Three
families of statistics, all vectorised over tokens (no per-token Python):

* transitions: P(e at layer l+d | e' at layer l) between top-1 experts, for d in `DISTANCES`, with the lift
  against a load-preserving shuffle (the rows of layer l+d permuted across tokens: both layers keep their
  loads, only the link between them breaks) and the mutual information I(l; l+d), observed and shuffled;
* diversity: distinct top-1 paths and top-k path sets per token id over windows of w layers, the
  conditional entropies H(path | token id) (and after shuffling token ids over rows), and on the sense
  corpus's target tokens H(path | token id) against H(path | token id, sense) with a permutation null
  (senses permuted among the occurrences of each target token id);
* agreement: the share of same- vs different-sense pairs whose target tokens follow the same top-1 path
  over a window of w layers (w = 1, 2, 4, all), Δ = same − different with lemma-clustered bootstrap CIs,
  within-lemma permutation p-values and controls (target token identity, context-word overlap, both, and a
  random-init null model).

Paths are compared through integer codes: exact (ids packed into 64 bits) when the window's ids fit,
otherwise a 64-bit hash (splitmix64), whose collisions (probability about n² 2^-64 among n paths) are
negligible at atlas sizes. Id-only engines (weights_dtype null) store each top-k as an unordered set: they
have no top-1, so their top-1 statistics are null and only the top-k path sets are reported.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import SENSES
from atlas_build.metrics.estimators.identity import target_identity
from atlas_build.metrics.estimators.stats import (
    cluster_bootstrap,
    cluster_sums,
    label_permutation_test,
    within_group_permutations,
)
from atlas_build.metrics.experts.blocks import token_ranks

DISTANCES = (1, 2, 4)
WINDOWS = (1, 2, 4, "all")
# Long atlases: at most this many evenly spaced window starts per width for the diversity statistics, and
# layer pairs per distance d > 1 for the transitions (d = 1: every adjacent pair).
MAX_WINDOW_STARTS = 4
MAX_DISTANT_PAIRS = 8
# Top-k path sets cost k lookups per token and layer: fewer window starts (and no all-layer window).
MAX_SET_WINDOW_STARTS = 2
# Transitions reported per layer pair (highest lift among cells with enough support).
TOP_TRANSITIONS = 3
# Permutations of the path nulls (entropy gain, agreement p-values): at most this many, so that the
# paths stay a fraction of the metrics' time and memory; a p-value's resolution is 1 / (R + 1).
MAX_PATH_PERMUTATIONS = 199
_CELLS_PER_CHUNK = 1 << 23

FORMULAS = {
    "path_transitions": "P(e at l+d | e' at l) = C[e', e] / C[e', ·] over tokens, C = top-1 transition "
    "counts; lift = C[e', e] · T / (C[e', ·] C[·, e]) (1 = the load-preserving shuffle's expectation); "
    "I(l; l+d) = Σ C/T log2(lift) bits, shuffled: the same after permuting layer l+d's rows (seeded)",
    "path_diversity": "per token id with ≥ m occurrences: distinct top-1 paths (top-k path sets) over a "
    "window of w MoE layers; H(path | token id) = H(token, path) − H(token), plug-in, bits; shuffled: token "
    "ids permuted over rows (same counts); windows of w layers at ≤ 8 evenly spaced starts, averaged",
    "path_sense_entropy": "on target tokens: gain = H(path | token id) − H(path | token id, sense) bits, "
    "averaged over window starts; null: senses permuted among the targets of each token id (R ≤ 199), "
    "p = (1 + #{gain* ≥ gain}) / (R + 1)",
    "path_agreement": "agree_p(w, s) = [top-1 experts of the two targets equal in layers s..s+w−1] (target: "
    "the first or last sub-token; --target all uses the last); "
    "Δ = mean over same-sense pairs − mean over different-sense pairs, averaged over window starts s; "
    "controls: Cochran–Mantel–Haenszel-weighted Δ within strata (token_identity: the 16 cells of same target "
    "token ids / surface form / left / right neighbour; "
    "context_words: context Jaccard 0 / below / above the median of J > 0; all: both), null_model: Δ(model) "
    "− Δ(random-init twin) on the pairs both routed; CIs: lemma-clustered bootstrap; p: within-lemma sense "
    "permutations (R ≤ 199)",
}


# ---- codes -----------------------------------------------------------------------------------------


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose output bits all depend on every input bit."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def id_bits(n_experts: int) -> int:
    return max(1, int(np.ceil(np.log2(max(2, n_experts)))))


def window_codes(ids: np.ndarray, start: int, width: int, n_experts: int) -> tuple[np.ndarray, bool]:
    """Codes of the windows `ids[start:start + width]` (`ids` layer-major `[L, n]` top-1 ids or set codes).

    Returns `(codes uint64 [n], exact)`: packed ids when `width · bits(N) ≤ 64` (and `ids` are expert ids),
    else a splitmix64 chain over the window.
    """
    bits = id_bits(n_experts)
    window = ids[start : start + width]
    n = ids.shape[1]
    if ids.dtype != np.uint64 and width * bits <= 64:
        codes = np.zeros(n, dtype=np.uint64)
        for j in range(width):
            codes |= window[j].astype(np.uint64) << np.uint64(j * bits)
        return codes, True
    # Ids packed exactly into 64-bit words of 64 // bits layers each, the words chained through mix64.
    per_word = max(1, 64 // bits) if ids.dtype != np.uint64 else 1
    codes = np.full(n, 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, width, per_word):
            word = np.zeros(n, dtype=np.uint64)
            for j in range(lo, min(width, lo + per_word)):
                shift = np.uint64((j - lo) * bits) if per_word > 1 else np.uint64(0)
                word ^= window[j].astype(np.uint64) << shift
            codes = mix64(codes + word + np.uint64(lo + 1))
    return codes, False


def set_codes(experts: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Order-free codes of top-k sets: `[n, k]` ids -> `[n]` uint64, Σ of a random 64-bit value per id."""
    with np.errstate(over="ignore"):
        return mix64(table[experts.astype(np.intp)].sum(axis=1, dtype=np.uint64))


def _chunks(column: pa.ChunkedArray | pa.Array, rows: np.ndarray | None) -> list:
    if rows is not None:
        return [column.take(pa.array(np.asarray(rows, dtype=np.int64)))]
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def top_columns(
    column: pa.ChunkedArray | pa.Array, n_layers: int, slot: int = 0, rows: np.ndarray | None = None
) -> np.ndarray:
    """The experts in top-k slot `slot`, layer-major `[L, T]` (or `[L, len(rows)]`), chunk by chunk."""
    chunks = _chunks(column, rows)
    dtype = np.dtype(column.type.value_type.value_type.to_pandas_dtype())
    out = np.empty((n_layers, sum(len(c) for c in chunks)), dtype=dtype)
    at = 0
    for chunk in chunks:
        if len(chunk):
            out[:, at : at + len(chunk)] = routing_array(chunk)[:, :, slot].T
            at += len(chunk)
    return out


def layer_set_codes(
    column: pa.ChunkedArray | pa.Array,
    layers: list[int],
    n_experts: int,
    seed: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k set codes, layer-major `[len(layers), T]` uint64 (a random value table per layer)."""
    rng = np.random.default_rng(seed)
    tables = rng.integers(0, 2**63, size=(max(layers, default=0) + 1, n_experts), dtype=np.uint64)
    chunks = _chunks(column, rows)
    out = np.empty((len(layers), sum(len(c) for c in chunks)), dtype=np.uint64)
    at = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        arr = routing_array(chunk)
        for j, layer in enumerate(layers):
            out[j, at : at + len(chunk)] = set_codes(arr[:, layer, :], tables[layer])
        at += len(chunk)
    return out


def window_starts(n_layers: int, width: int, limit: int = MAX_WINDOW_STARTS) -> list[int]:
    """Evenly spaced starts of windows of `width` layers (all of them when there are ≤ `limit`)."""
    n = n_layers - width + 1
    if n <= 0:
        return []
    if n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def widths(n_layers: int) -> list[tuple[str, int]]:
    """`(name, width)` of the windows: 1, 2, 4 (when they fit) and all layers, without duplicates."""
    out: list[tuple[str, int]] = []
    for w in WINDOWS:
        width = n_layers if w == "all" else int(w)
        if width <= n_layers and width not in [x for _, x in out]:
            out.append((str(w), width))
    if out and out[-1][0] != "all" and out[-1][1] == n_layers:
        out[-1] = ("all", n_layers)
    return out


# ---- transitions -----------------------------------------------------------------------------------


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


# ---- diversity -------------------------------------------------------------------------------------


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
    ranks = token_ranks(token_ids, min_count, np.random.default_rng(seed + 11))
    occurrences = ranks.occurrences.astype(np.float64)
    n_ranks, m = len(occurrences), float(occurrences.sum())
    n_layers = n_layers if n_layers is not None else top1.shape[0]
    out: dict = {"min_count": min_count, "n_token_ids": n_ranks, "n_occurrences": int(m), "windows": {}}
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
                rankings = [("", ranks.rank)] + ([("_shuffled", ranks.shuffled)] if kind == "top1" else [])
                for suffix, rank in rankings:
                    distinct, f_cells = _grouped(rank, codes, exact, n_ranks)
                    stats["distinct" + suffix].append(float((distinct / np.maximum(occurrences, 1)).mean()))
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


# ---- sense-pair agreement --------------------------------------------------------------------------


def target_rows(routing: pa.Table, corpus: str, example_ids: pa.Array, mode: str) -> np.ndarray:
    """Routing row of each example's target sub-token (`first`, else the last; `all` uses the last), −1
    when the example has no routed target. `[E]` int64."""
    mask = pc.and_(routing.column("is_target"), pc.equal(routing.column("corpus"), corpus))
    rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    out = np.full(len(example_ids), -1, dtype=np.int64)
    if not len(rows):
        return out
    sub = routing.select(["source_id", "token_index"]).take(pa.array(rows))
    position = pc.fill_null(pc.index_in(sub.column("source_id"), value_set=example_ids), -1).to_numpy()
    position = position.astype(np.int64)
    token_index = sub.column("token_index").to_numpy()
    keep = position >= 0
    order = np.lexsort((token_index[keep], position[keep]))
    pos, chosen = position[keep][order], rows[keep][order]
    boundary = pos[1:] != pos[:-1]
    pick = np.r_[True, boundary] if mode == "first" else np.r_[boundary, True]
    out[pos[pick]] = chosen[pick]
    return out


def agreement_values(top1_a: np.ndarray, top1_b: np.ndarray, n_layers: int) -> tuple[list, np.ndarray]:
    """Per window width: the starts and `[P, starts]` agreement (all top-1 equal in the window)."""
    mismatch = np.cumsum(np.c_[np.zeros(len(top1_a), np.int64), top1_a != top1_b], axis=1)
    out = []
    for name, width in widths(n_layers):
        starts = np.arange(n_layers - width + 1)
        agree = (mismatch[:, starts + width] - mismatch[:, starts]) == 0
        out.append((name, width, starts, agree.astype(np.float64)))
    return out


def stratified_delta(
    values: np.ndarray,
    same: np.ndarray,
    strata: np.ndarray,
    cluster: np.ndarray,
    n_clusters: int,
    options,
    seed_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Δ = Σ_s w_s (mean_same,s − mean_diff,s) / Σ_s w_s per column of `values` `[P, C]`, CMH weights
    w_s = n_same,s n_diff,s / (n_same,s + n_diff,s); one stratum gives the plain difference of means.

    Returns `(estimate, ci_low, ci_high)` `[C]` from a cluster bootstrap of the per-(cluster, stratum)
    sums (summed over the key cluster · S + stratum: no one-hot over strata is ever built).
    """
    strata = np.unique(strata, return_inverse=True)[1].reshape(-1) if len(strata) else strata
    n_strata = int(strata.max()) + 1 if len(strata) else 1
    n_cols = values.shape[1]
    a = same.astype(np.float64)[:, None]
    width = 2 + 2 * n_cols
    rows = np.hstack([a, 1 - a, values * a, values * (1 - a)])  # [P, 2 + 2C]
    sums = cluster_sums(cluster * n_strata + strata, rows, n_clusters * n_strata)
    sums = sums.reshape(n_clusters, n_strata * width)
    sums = sums[sums.reshape(n_clusters, n_strata, width)[:, :, :2].sum(axis=(1, 2)) > 0]

    def estimator(t):
        t = t.reshape(*t.shape[:-1], n_strata, width)
        ns, nd = t[..., 0], t[..., 1]
        ss, sd = t[..., 2 : 2 + n_cols], t[..., 2 + n_cols :]
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where((ns > 0) & (nd > 0), ns * nd / (ns + nd), 0.0)[..., None]
            diff = np.where(weight > 0, ss / ns[..., None] - sd / nd[..., None], 0.0)
            return (weight * diff).sum(axis=-2) / weight.sum(axis=-2)

    return cluster_bootstrap(
        sums,
        estimator,
        n_resamples=options.n_resamples,
        confidence=options.confidence,
        seed=options.seed + 30 + seed_offset,
    )


def _interval(est, low, high, i=None) -> dict:
    if i is None:
        return {"estimate": est, "ci_low": low, "ci_high": high}
    return {"estimate": float(est[i]), "ci_low": float(low[i]), "ci_high": float(high[i])}


def _sign(iv: dict) -> int:
    low, high = iv["ci_low"], iv["ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


def context_strata(jaccard: np.ndarray) -> np.ndarray:
    """0: no shared context word; 1 / 2: J > 0 below / above the median of the positive J."""
    positive = jaccard[jaccard > 0]
    median = float(np.median(positive)) if len(positive) else 0.0
    return np.where(jaccard <= 0, 0, np.where(jaccard <= median, 1, 2)).astype(np.int64)


def agreement(
    top1: np.ndarray,
    target_token: np.ndarray,
    corpus,
    options,
    moe_layers: list[int],
    null_top1: np.ndarray | None = None,
    null_model: str | None = None,
    identity_cells: np.ndarray | None = None,
) -> dict | None:
    """Sense-pair top-1 path agreement per window width, with controls (see `FORMULAS`).

    Args:
        top1: `[E, L]` top-1 ids at each example's target (rows of examples without target: any value).
        target_token: `[E]` target token id, −1 without routed target.
        corpus: the `SenseCorpus` (pairs, lemma clusters, context Jaccard, synsets).
        options: `BootstrapOptions`.
        null_top1: `[E, L']` the same for a random-init null model, or None.
        identity_cells: `[P]` token-identity cell of every pair (`TargetIdentity.pair_cells`: same target
            id sequence, surface form, left and right neighbour), or None (then: same target token id).
    """
    n_layers = top1.shape[1]
    pa_, pb = corpus.pair_a, corpus.pair_b
    valid = (target_token[pa_] >= 0) & (target_token[pb] >= 0)
    if null_top1 is not None:
        valid_null = valid & (null_top1[pa_, 0] >= 0) & (null_top1[pb, 0] >= 0)
    if not valid.any():
        return None
    ia, ib = pa_[valid], pb[valid]
    same = corpus.pair_same[valid]
    if same.all() or not same.any():
        return None
    cluster = corpus.pair_group[valid]
    windows = agreement_values(top1[ia], top1[ib], n_layers)
    # Columns of the raw bootstrap: w = 1 per layer, then each width's mean over its starts.
    means = np.column_stack([agree.mean(axis=1) for _, _, _, agree in windows])
    per_layer = windows[0][3]
    values = np.hstack([per_layer, means])
    zeros = np.zeros(len(values), dtype=np.int64)
    est, low, high = stratified_delta(values, same, zeros, cluster, corpus.n_groups, options)
    remap = np.full(len(corpus.group), -1)
    used = np.unique(np.r_[ia, ib])
    remap[used] = np.arange(len(used))
    p = label_permutation_test(
        means,
        remap[ia],
        remap[ib],
        corpus.synset[used],
        corpus.group[used],
        n_permutations=min(options.n_permutations, MAX_PATH_PERMUTATIONS),
        seed=options.seed + 31,
    )
    same_token = target_token[ia] == target_token[ib]
    context = context_strata(corpus.jaccard[valid])
    if identity_cells is not None:
        identity = np.asarray(identity_cells)[valid].astype(np.int64)
        identity_method = (
            "CMH strata: the 16 cells of same target token-id sequence × same surface form × same left "
            "neighbour × same right neighbour (as the κ token_identity control)"
        )
    else:
        identity, identity_method = (
            same_token.astype(np.int64),
            "CMH strata: same vs different target token id",
        )
    controls_spec = {
        "token_identity": (identity_method, identity),
        "context_words": ("CMH strata: context Jaccard 0 / ≤ median / > median of J > 0", context),
        "all": ("CMH strata: token identity cells × context Jaccard strata", identity * 3 + context),
    }
    controls = {}
    for offset, (name, (method, strata)) in enumerate(controls_spec.items(), start=1):
        c_est, c_low, c_high = stratified_delta(
            means, same, strata, cluster, corpus.n_groups, options, offset
        )
        controls[name] = {"method": method, "delta": (c_est, c_low, c_high)}
    if null_top1 is not None and null_top1.shape[1] == n_layers:
        keep = valid_null[valid]
        null_windows = agreement_values(null_top1[ia[keep]], null_top1[ib[keep]], n_layers)
        null_means = np.column_stack([agree.mean(axis=1) for _, _, _, agree in null_windows])
        c_est, c_low, c_high = stratified_delta(
            means[keep] - null_means, same[keep], zeros[keep], cluster[keep], corpus.n_groups, options, 9
        )
        controls["null_model"] = {
            "method": f"Δ(model) − Δ({null_model}) on the pairs both routed",
            "delta": (c_est, c_low, c_high),
        }
    n_l = n_layers
    out: dict = {
        "n_pairs": {"same": int(same.sum()), "different": int((~same).sum())},
        "n_lemmas": int(len(np.unique(cluster))),
        "n_permutations": min(options.n_permutations, MAX_PATH_PERMUTATIONS),
        "same_target_token": {
            "same": float(same_token[same].mean()),
            "different": float(same_token[~same].mean()),
        },
        "per_layer": {
            "delta": _interval(est[:n_l], low[:n_l], high[:n_l]),
            "same": per_layer[same].mean(axis=0),
            "different": per_layer[~same].mean(axis=0),
        },
        "windows": {},
    }
    for j, (name, width, starts, agree) in enumerate(windows):
        raw = _interval(est, low, high, n_l + j)
        block = {
            "width": width,
            "first_layers": [int(moe_layers[s]) for s in starts],
            "same": float(means[same, j].mean()),
            "different": float(means[~same, j].mean()),
            "per_start_delta": agree[same].mean(axis=0) - agree[~same].mean(axis=0),
            "delta": {**raw, "p_value": float(p[j])},
            "controls": {},
        }
        signs = [_sign(raw)]
        for name_c, control in controls.items():
            iv = _interval(*control["delta"], j)
            block["controls"][name_c] = {"method": control["method"], "delta": iv}
            signs.append(_sign(iv))
        block["survives"] = bool(signs[0] != 0 and all(s == signs[0] for s in signs))
        out["windows"][name] = block
    return out


# ---- everything --------------------------------------------------------------------------------------


def path_metrics(
    routing: pa.Table,
    row: dict,
    corpus=None,
    *,
    options=None,
    target: str = "last",
    min_count: int = 5,
    null_routing: pa.Table | None = None,
    null_row: dict | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Every path statistic of one model (the `models[slug].paths` block) and its arrays for the `.npz`.

    Args:
        routing: the model's routing rows (`source_id`, `corpus`, `token_index`, `token_id`, `is_target`,
            `experts`).
        row: its `models` row.
        corpus: the `SenseCorpus`, or None (no sense statistics).
        options: `BootstrapOptions` (resamples, permutations, confidence, seed).
        null_routing, null_row: a random-init null model for the agreement control, or None.
    """
    n_experts, moe_layers = row["n_routed_experts"], list(row["moe_layers"])
    n_layers = len(moe_layers)
    has_top1 = row.get("weights_dtype") is not None
    column = routing.column("experts")
    seed = options.seed if options is not None else 0
    top1 = top_columns(column, n_layers) if has_top1 else None  # [L, T]
    token_ids = routing.column("token_id").to_numpy()
    # Top-k set codes for the layers of the sampled windows (the all-layer window uses top-1 only).
    set_layers = sorted(
        {
            x
            for name, w in widths(n_layers)
            if name != "all"
            for s in window_starts(n_layers, w, MAX_SET_WINDOW_STARTS)
            for x in range(s, s + w)
        }
    )
    sets = layer_set_codes(column, set_layers, n_experts, seed + 5) if set_layers else None
    out: dict = {
        "basis": "top-1 paths and top-k path sets"
        if has_top1
        else "top-k path sets only (no top-1: id-only engine)",
        "transitions": None,
        "diversity": diversity(top1, sets, set_layers, token_ids, n_experts, min_count, seed, n_layers),
        "sense_entropy": None,
        "agreement": None,
    }
    arrays: dict[str, np.ndarray] = {}
    if has_top1:
        out["transitions"], adjacent = transitions(top1, n_experts, moe_layers, min_count, seed + 7)
        arrays["path_transition_counts"] = adjacent
    if corpus is not None and has_top1 and options is not None:
        rows = target_rows(routing, SENSES, corpus.example_ids, target)
        present = rows >= 0
        target_token = np.where(present, token_ids[np.maximum(rows, 0)], -1)
        target_top1 = np.zeros((len(rows), n_layers), dtype=top1.dtype)
        target_top1[present] = top1[:, rows[present]].T
        out["target"] = "last" if target == "all" else target
        out["sense_entropy"] = sense_entropy(
            target_top1[present],
            target_token[present],
            corpus.synset[present],
            n_experts,
            options.n_permutations,
            seed,
        )
        null_top1 = None
        if null_routing is not None and null_row is not None and null_row.get("weights_dtype") is not None:
            null_rows = target_rows(null_routing, SENSES, corpus.example_ids, target)
            null_top1 = np.full((len(null_rows), len(null_row["moe_layers"])), -1, dtype=np.int64)
            ok = null_rows >= 0
            null_top1[ok] = top_columns(
                null_routing.column("experts"), len(null_row["moe_layers"]), rows=null_rows[ok]
            ).T
        cells = target_identity(routing, corpus.example_ids, corpus.form).pair_cells(
            corpus.pair_a, corpus.pair_b
        )
        out["agreement"] = agreement(
            target_top1.astype(np.int64),
            target_token,
            corpus,
            options,
            moe_layers,
            null_top1,
            null_row["model_slug"] if null_row else None,
            identity_cells=cells,
        )
    return out, arrays


# What a forked path worker reads: set just before the fork, inherited (memory-mapped Arrow, not copied).
_SHARED: dict = {}
# Below this many routing entries the paths run in-process at `result()`: forking costs more than it saves.
PARALLEL_MIN_ENTRIES = 1 << 24


def _run_shared() -> tuple[dict, dict[str, np.ndarray]]:
    args, kwargs = _SHARED["args"], _SHARED["kwargs"]
    return path_metrics(*args, **kwargs)


class PathMetricsJob:
    """`path_metrics` in one forked worker (large atlases), so that it runs while the caller computes the
    sense metrics; small atlases run in-process at `result()`. Arguments as `path_metrics`."""

    def __init__(self, *args, workers: int | None = None, **kwargs):
        import multiprocessing

        routing, row = args[0], args[1]
        self.args, self.kwargs = args, kwargs
        entries = routing.num_rows * len(row["moe_layers"]) * row["top_k"]
        parallel = workers if workers is not None else int(entries >= PARALLEL_MIN_ENTRIES)
        self._pool = self._async = None
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            _SHARED.update(args=args, kwargs=kwargs)
            try:  # the worker forks here and inherits `_SHARED`
                self._pool = multiprocessing.get_context("fork").Pool(1)
            finally:
                _SHARED.clear()
            self._async = self._pool.apply_async(_run_shared)

    def result(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._async is None:
            return path_metrics(*self.args, **self.kwargs)
        try:
            return self._async.get()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (idempotent); `result()` calls it."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
