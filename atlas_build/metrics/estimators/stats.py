"""Clustered resampling: bootstrap CIs over lemma clusters and within-lemma permutation tests.

Pairs of one lemma share examples and context, so they are not independent: every interval here resamples
whole clusters (lemmas), and every permutation test permutes sense labels only inside a lemma.

Everything is computed from per-cluster sufficient statistics (sums), so one bootstrap replicate costs a
`[replicates, clusters] @ [clusters, stats]` matrix product, not a pass over the pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

# Bound on the `[batch, clusters]` count matrix that one vectorised statistic call materialises.
_BATCH_CELLS = 1 << 22
# BCa needs a jackknife over clusters, C evaluations of a `[C] @ [C, D]` product (O(C² D)); above this many
# clusters the percentile interval is used (the bootstrap distribution of these means is near normal).
BCA_MAX_CLUSTERS = 1000


def ci_method(n_clusters: int) -> str:
    return "BCa" if n_clusters <= BCA_MAX_CLUSTERS else "percentile"


class ClusterIndex:
    """Rows grouped by cluster code once (stable sort), for repeated per-cluster sums."""

    def __init__(self, cluster: np.ndarray, n_clusters: int):
        self.n_clusters = n_clusters
        self.order = np.argsort(cluster, kind="stable")
        sorted_cluster = cluster[self.order]
        self.starts = (
            np.flatnonzero(np.r_[True, sorted_cluster[1:] != sorted_cluster[:-1]])
            if len(cluster)
            else np.zeros(0, int)
        )
        self.ids = sorted_cluster[self.starts]

    def sort(self, values: np.ndarray) -> np.ndarray:
        """Rows of `values` in cluster order (for `sums(..., presorted=True)`)."""
        return np.asarray(values)[self.order]

    def sums(self, values: np.ndarray, presorted: bool = False) -> np.ndarray:
        """Sum rows of `values` `[n, D]` per cluster: `[n_clusters, D]` float64."""
        values = np.asarray(values, dtype=np.float64).reshape(len(self.order), -1)
        out = np.zeros((self.n_clusters, values.shape[1]))
        if len(self.order):
            out[self.ids] = np.add.reduceat(values if presorted else values[self.order], self.starts, axis=0)
        return out


def cluster_sums(cluster: np.ndarray, values: np.ndarray, n_clusters: int) -> np.ndarray:
    """Sum rows of `values` `[n, D]` per cluster code in `[0, n_clusters)`: `[n_clusters, D]` float64."""
    return ClusterIndex(cluster, n_clusters).sums(values)


def cluster_bootstrap(
    sums: np.ndarray,
    estimator: Callable[[np.ndarray], np.ndarray],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster bootstrap of a statistic of summed per-cluster statistics (`scipy.stats.bootstrap`).

    A replicate draws C clusters with replacement; with multiplicities w (a `[C]` count vector) its
    statistic is `estimator(w @ sums)`. BCa intervals up to `BCA_MAX_CLUSTERS` clusters, percentile
    intervals above (and wherever BCa is undefined, e.g. a constant bootstrap distribution).

    Args:
        sums: `[C, D]` per-cluster sufficient statistics.
        estimator: maps totals `[..., D]` to estimates `[..., m]` (vectorised over leading axes).
        n_resamples, confidence, seed: bootstrap settings.

    Returns:
        `(estimate, low, high)`, each `[m]`; the estimate uses all clusters once. NaN bounds with < 2 clusters.
    """
    sums = np.asarray(sums, dtype=np.float64)
    n_clusters = len(sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.asarray(estimator(sums.sum(axis=0)), dtype=np.float64)
    nan = np.full_like(estimate, np.nan)
    if n_clusters < 2 or n_resamples < 1:
        return estimate, nan, nan.copy()

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(idx, axis, -1)
        lead = idx.shape[:-1]
        flat = idx.reshape(-1, idx.shape[-1])
        rows = len(flat)
        # Resampled cluster indices -> multiplicities, so the replicate is one matrix product.
        counts = np.bincount(
            (np.arange(rows)[:, None] * n_clusters + flat).ravel(), minlength=rows * n_clusters
        ).reshape(rows, n_clusters)
        # float64 throughout: a float32 product carries rounding noise as large as the sampling error of a
        # regression coefficient solved from these totals.
        totals = counts.astype(np.float64) @ sums
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.asarray(estimator(totals), dtype=np.float64)
        return np.moveaxis(out.reshape(*lead, -1), -1, 0)

    batch = max(1, min(n_resamples, _BATCH_CELLS // n_clusters))
    with warnings.catch_warnings():
        # Degenerate (constant) layers are handled below with the percentile interval.
        warnings.simplefilter("ignore")
        with np.errstate(divide="ignore", invalid="ignore"):
            result = stats.bootstrap(
                (np.arange(n_clusters),),
                statistic,
                vectorized=True,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=ci_method(n_clusters),
                batch=batch,
                random_state=np.random.default_rng(seed),
            )
    low = np.array(result.confidence_interval.low, dtype=np.float64).reshape(-1)
    high = np.array(result.confidence_interval.high, dtype=np.float64).reshape(-1)
    missing = ~(np.isfinite(low) & np.isfinite(high))
    if missing.any():
        dist = np.asarray(result.bootstrap_distribution).reshape(len(estimate), -1)[missing]
        alpha = (1 - confidence) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low[missing] = np.nanquantile(dist, alpha, axis=1)
            high[missing] = np.nanquantile(dist, 1 - alpha, axis=1)
    return estimate, low, high


def within_group_permutations(
    labels: np.ndarray, groups: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """`[R, n]` copies of `labels`, each shuffled uniformly at random inside every group.

    Groups of equal size are shuffled together (`Generator.permuted` along a short last axis), so the cost is
    O(R * n) with one vectorised call per distinct group size.
    """
    n = len(labels)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if n else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, n])
    out = np.empty((n_permutations, n), dtype=labels.dtype)
    for size in np.unique(sizes):
        idx = order[starts[sizes == size][:, None] + np.arange(size)]  # [groups of this size, size]
        if size == 1:
            out[:, idx[:, 0]] = labels[idx[:, 0]]
            continue
        # Fisher–Yates along the last axis of each copy (`Generator.permuted`): no sort of random keys.
        out[:, idx] = rng.permuted(np.broadcast_to(labels[idx], (n_permutations, *idx.shape)).copy(), axis=-1)
    return out


def label_permutation_test(
    values: np.ndarray,
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    n_permutations: int = 999,
    seed: int = 0,
    chunk: int = 128,
) -> np.ndarray:
    """Two-sided permutation p-values of Δ = mean(values | same label) − mean(values | different label).

    Pairs `(pair_a[p], pair_b[p])` index examples; a pair is "same" when both examples carry the same label.
    The null distribution relabels the examples: their labels are permuted within each group (lemma), and
    every pair's same/different status is recomputed from the permuted labels. This keeps each lemma's
    sense counts and the pairs' shared-example structure, and is exact under the null hypothesis that an
    example's routing does not depend on its sense given the lemma. (`scipy.stats.permutation_test`
    permutes observations freely, which would break this structure.)

    p = (1 + #{r : |Δ_r| ≥ |Δ_obs|}) / (R + 1), per column of `values` `[P, M]`.
    """
    values = np.asarray(values, dtype=np.float64)
    n_pairs, n_cols = values.shape

    # Only equality of labels matters: dense codes in the smallest integer type keep the gathers cheap.
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    labels = codes.astype(np.min_scalar_type(max(1, len(codes))))

    def deltas(same: np.ndarray) -> np.ndarray:
        n_same = same.sum(axis=-1, keepdims=True)
        sum_same = same.astype(np.float64) @ values
        with np.errstate(divide="ignore", invalid="ignore"):
            return sum_same / n_same - (total - sum_same) / (n_pairs - n_same)

    total = values.sum(axis=0, dtype=np.float64)
    observed = deltas((labels[pair_a] == labels[pair_b])[None, :])[0]
    if n_permutations < 1 or n_pairs == 0:
        return np.full(n_cols, np.nan)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(n_cols, dtype=np.int64)
    tolerance = 1e-6 * np.maximum(1.0, np.abs(observed))
    done = 0
    while done < n_permutations:
        r = min(chunk, n_permutations - done)
        permuted = within_group_permutations(labels, groups, r, rng)
        null = deltas(np.take(permuted, pair_a, axis=1) == np.take(permuted, pair_b, axis=1))
        # A permutation with only same (or only different) pairs has no Δ: it counts as not exceeding.
        exceed += (np.abs(null) >= np.abs(observed) - tolerance).sum(axis=0)
        done += r
    p = (1 + exceed) / (n_permutations + 1)
    p[~np.isfinite(observed)] = np.nan
    return p


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (`scipy.stats.false_discovery_control`), NaNs kept."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok])
    return out


def monte_carlo_interval(p_value: float, n_permutations: int, confidence: float = 0.95) -> list[float] | None:
    """Exact (Clopper–Pearson) interval of the permutation p-value's Monte Carlo error.

    With p = (1 + b) / (R + 1), b = #{|Δ*| ≥ |Δ|} out of R permutations is binomial(R, π) for the true
    p-value π; the interval for π is `scipy.stats.binomtest(b, R).proportion_ci(method="exact")`.
    Returns `[low, high]`, or None without permutations or a p-value.
    """
    if n_permutations < 1 or p_value is None or not np.isfinite(p_value):
        return None
    exceed = int(round(p_value * (n_permutations + 1))) - 1
    exceed = min(max(exceed, 0), n_permutations)
    ci = stats.binomtest(exceed, n_permutations).proportion_ci(confidence_level=confidence, method="exact")
    return [float(ci.low), float(ci.high)]
