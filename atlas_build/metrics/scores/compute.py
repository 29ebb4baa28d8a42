"""Router scores beyond the top-k (atlases built with `atlas build --scores M`), from the dataset alone.

Per token and MoE layer the atlas stores the M experts of highest selection score and those scores
(`score_experts`, `scores`). From them:

* the selection margin m = s(last chosen) − s(first rejected) of the top-k step: the lowest score among
  the chosen experts minus the highest among the stored, not chosen experts of the groups the router kept
  (group-limited routers, DeepSeek: the groups of the chosen experts; greedy routers: all experts), so
  m ≥ 0. m is undefined when a chosen expert is not among the stored M, or when no stored expert of those
  groups was rejected (M = k). Separately, the share of token-layers where the group limit overrode a
  higher score (a rejected expert outside the kept groups scores above the last chosen);
* the share of near-ties, |m| < `near_tie` (in the score's own units);
* whether the sense effect holds on confidently routed targets only: Δκ (same − different sense) per layer
  over the pairs whose two targets both have m above that layer's median margin, next to Δκ over all pairs
  with a margin, with lemma-clustered bootstrap CIs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas_build.atlas.routing import routing_array
from atlas_build.metrics.estimators.overlap import chance_kappa
from atlas_build.metrics.estimators.stats import cluster_bootstrap, cluster_sums

NEAR_TIE = 1e-3
QUANTILES = (0.1, 0.5, 0.9)
SCORE_COLUMNS = ["experts", "score_experts", "scores"]

FORMULAS = {
    "selection_margin": "m = s(last chosen) − s(first rejected) per token and MoE layer, s = the router's "
    "selection score (DeepSeek-V3/R1, GLM-4 MoE: sigmoid + correction bias; softmax routers: the probability; "
    "GPT-OSS: the logits with the router bias; Llama 4: the raw logits), from the stored top-M; first "
    "rejected: among the kept groups (group-limited routers: the chosen experts' groups); near-tie: m < 0.001 "
    "in the score's own units (logits for GPT-OSS and Llama 4, so not comparable with probabilities); group "
    "override: a rejected expert outside the kept groups scores above "
    "the last chosen",
    "confident_sense": "Δκ[l] over the sense pairs whose two targets both have m[l] above the median m[l] of "
    "all tokens, beside Δκ[l] over every pair with a defined margin; CIs: lemma-clustered bootstrap",
}


def margins(
    experts: np.ndarray, score_ids: np.ndarray, scores: np.ndarray, group_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """From experts `[n, L, k]` and the stored top-M `[n, L, M]`: the top-k step's margin m `[n, L]` (NaN
    where undefined) and whether a rejected expert outside the kept groups outscored the last chosen."""
    chosen = (score_ids[..., :, None] == experts[..., None, :]).any(axis=-1)  # [n, L, M]
    values = scores.astype(np.float64)
    last = np.where(chosen, values, np.inf).min(axis=-1)
    if group_size:
        groups = experts // group_size
        kept = (score_ids[..., :, None] // group_size == groups[..., None, :]).any(axis=-1)
    else:
        kept = np.ones_like(chosen)
    first_out = np.where(~chosen & kept, values, -np.inf).max(axis=-1)
    outside = np.where(~chosen & ~kept, values, -np.inf).max(axis=-1)
    complete = chosen.sum(axis=-1) == experts.shape[-1]  # every chosen expert is among the stored M
    with np.errstate(invalid="ignore"):
        out = last - first_out
    return np.where(complete & np.isfinite(out), out, np.nan), complete & (outside > last)


def column_margins(
    table: pa.Table, group_size: int | None = None, chunk_rows: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray]:
    """`margins` of every row of a routing table with score columns, chunk by chunk (`[T, L]` each)."""
    n_layers = table.schema.field("experts").type.list_size
    out = np.empty((table.num_rows, n_layers))
    overridden = np.zeros((table.num_rows, n_layers), dtype=bool)
    for lo in range(0, table.num_rows, chunk_rows):
        part = table.slice(lo, chunk_rows)
        out[lo : lo + part.num_rows], overridden[lo : lo + part.num_rows] = margins(
            routing_array(part.column("experts")).astype(np.int64),
            routing_array(part.column("score_experts")).astype(np.int64),
            routing_array(part.column("scores"), np.float64),
            group_size,
        )
    return out, overridden


def _per_layer_delta(kappa, same, mask, cluster, n_clusters, options, seed_offset):
    """Δκ[l] = mean κ over same-sense pairs in mask[:, l] − mean over different-sense ones, and its layer
    mean, with a cluster bootstrap (the pair set may differ per layer)."""
    n_layers = kappa.shape[1]
    a = (mask & same[:, None]).astype(np.float64)
    b = (mask & ~same[:, None]).astype(np.float64)
    k = np.nan_to_num(kappa)
    sums = cluster_sums(cluster, np.hstack([a, b, k * a, k * b]), n_clusters)
    sums = sums[sums[:, : 2 * n_layers].sum(axis=1) > 0]

    def estimator(t):
        na, nb = t[..., :n_layers], t[..., n_layers : 2 * n_layers]
        sa, sb = t[..., 2 * n_layers : 3 * n_layers], t[..., 3 * n_layers :]
        delta = sa / na - sb / nb
        return np.concatenate([delta, np.nanmean(delta, axis=-1, keepdims=True)], axis=-1)

    est, low, high = cluster_bootstrap(
        sums,
        estimator,
        n_resamples=options.n_resamples,
        confidence=options.confidence,
        seed=options.seed + 40 + seed_offset,
    )
    return {
        "delta": {"estimate": est[:n_layers], "ci_low": low[:n_layers], "ci_high": high[:n_layers]},
        "layer_mean": {"estimate": float(est[-1]), "ci_low": float(low[-1]), "ci_high": float(high[-1])},
        "n_pairs": {"same": a.sum(axis=0).astype(int), "different": b.sum(axis=0).astype(int)},
    }


def score_metrics(
    table: pa.Table,
    row: dict,
    corpus=None,
    *,
    target_rows: np.ndarray | None = None,
    options=None,
    near_tie: float = NEAR_TIE,
) -> dict | None:
    """The `models[slug].scores` block, or None when the model was built without `--scores`.

    Args:
        table: routing rows with `experts`, `score_experts`, `scores`.
        row: the models row (`scores_top_m`, `top_k`, `n_routed_experts`).
        corpus: the `SenseCorpus`, or None.
        target_rows: `[E]` routing row of each example's target (−1: none), for the sense comparison.
        options: `BootstrapOptions`.
    """
    m_top = row.get("scores_top_m")
    if not m_top or "scores" not in table.schema.names:
        return None
    top_k, n_experts = row["top_k"], row["n_routed_experts"]
    grouped = row.get("topk_method") in ("group_limited_greedy", "noaux_tc") and row.get("n_group")
    margin, override = column_margins(table, n_experts // row["n_group"] if grouped else None)
    defined = np.isfinite(margin)
    with np.errstate(invalid="ignore"):
        quantiles = (
            np.nanquantile(np.where(defined, margin, np.nan), QUANTILES, axis=0) if defined.any() else None
        )
    share = defined.mean(axis=0) if len(margin) else np.zeros(margin.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        near = np.where(defined, np.abs(margin) < near_tie, False).sum(axis=0) / defined.sum(axis=0)
        overridden = override.mean(axis=0) if len(override) else np.zeros(margin.shape[1])
    out: dict = {
        "scores_top_m": int(m_top),
        "near_tie": near_tie,
        "margin_defined_share": share,
        "margin_quantiles": {f"q{int(q * 100)}": quantiles[i] for i, q in enumerate(QUANTILES)}
        if quantiles is not None
        else None,
        "near_tie_share": near,
        "group_overridden_share": overridden,
        "confident_sense": None,
        "note": None if m_top > top_k else "M = k: no rejected expert is stored, so no margin is defined",
    }
    if corpus is None or target_rows is None or options is None or quantiles is None:
        return out
    present = target_rows >= 0
    ia, ib = corpus.pair_a, corpus.pair_b
    valid = present[ia] & present[ib]
    if not valid.any():
        return out
    ra, rb = target_rows[ia[valid]], target_rows[ib[valid]]
    experts = routing_array(table.column("experts").take(pa.array(np.r_[ra, rb]))).astype(np.int64)
    ea, eb = experts[: len(ra)], experts[len(ra) :]
    overlap = np.zeros(ea.shape[:2])
    for j in range(top_k):
        overlap += (ea[:, :, j : j + 1] == eb).any(axis=-1)
    kappa = chance_kappa(overlap, top_k, n_experts)
    ma, mb = margin[ra], margin[rb]
    median = quantiles[QUANTILES.index(0.5)]
    both_defined = np.isfinite(ma) & np.isfinite(mb)
    confident = both_defined & (ma > median) & (mb > median)
    same, cluster = corpus.pair_same[valid], corpus.pair_group[valid]
    out["confident_sense"] = {
        "threshold": "margin above the layer's median margin over all tokens, for both targets",
        "all": _per_layer_delta(kappa, same, both_defined, cluster, corpus.n_groups, options, 0),
        "confident": _per_layer_delta(kappa, same, confident, cluster, corpus.n_groups, options, 1),
    }
    return out


def model_scores(src, row: dict, routing: pa.Table, corpus=None, *, options=None, target: str = "last"):
    """`score_metrics` for one model of an `AtlasSource` (None unless it was built with `--scores`)."""
    if not row.get("scores_top_m"):
        return None
    from atlas_build.atlas.schema import ROUTING_PREFIX, SENSES
    from atlas_build.metrics.paths.compute import target_rows

    table = src.table(ROUTING_PREFIX + row["model_slug"], columns=SCORE_COLUMNS)
    rows = target_rows(routing, SENSES, corpus.example_ids, target) if corpus is not None else None
    return score_metrics(table, row, corpus, target_rows=rows, options=options)
