"""Sense-pair top-1 path agreement over windows of w layers, with CMH-stratified controls (see `FORMULAS`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.metrics.estimators.stats import cluster_bootstrap, cluster_sums, label_permutation_test
from atlas_build.metrics.paths.arrays import widths
from atlas_build.metrics.paths.diversity import MAX_PATH_PERMUTATIONS


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
