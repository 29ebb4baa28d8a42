"""The expert blocks of a model's metrics: load, entropy, co-activation against the router-aware baseline,
token specialisation (ours and OLMoE's), top experts, and the traces' marker statistics."""

from __future__ import annotations

import numpy as np

from atlas_build.metrics.experts import blocks as ex
from atlas_build.metrics.experts.baselines import RouterConstraints, simulate_uniform

TOP_EXPERTS = 5


def _top_experts(
    scores: np.ndarray, counts: np.ndarray, min_count: int, n: int = TOP_EXPERTS
) -> list[list[dict]]:
    """Per layer, the n experts of highest nPMI among those seen with the markers ≥ `min_count` times."""
    out = []
    for layer_scores, layer_counts in zip(scores, counts, strict=True):
        order = np.lexsort((-layer_counts, -layer_scores))
        order = order[layer_counts[order] >= min_count][:n]
        out.append(
            [{"expert": int(e), "npmi": float(layer_scores[e]), "count": int(layer_counts[e])} for e in order]
        )
    return out


def trace_metrics(ep: ex.ExpertPass, min_count: int) -> dict | None:
    """Reasoning traces (routing rows of corpus `traces`), per layer, or None when there are none.

    nPMI(M, e) over trace tokens (M: the token carries a reasoning marker; `experts.npmi`), with the top
    experts, also per marker with ≥ `min_count` tokens; expert load per segment and
    JS(think ‖ answer) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, base 2.
    """
    tr, tc = ep.traces, ep.trace_counts
    if tr is None or tc is None:
        return None
    n = len(tr.rows)
    marked = int((tr.marker >= 0).sum())
    out: dict = {"n_tokens": n, "n_marker_tokens": marked}
    if marked:
        score = ex.npmi(tc.marker_any, marked, tc.experts, n)
        out["npmi"] = score
        out["top_experts"] = _top_experts(score, tc.marker_any, min_count)
        per_marker = np.bincount(tr.marker[tr.marker >= 0], minlength=len(tr.marker_names))
        out["markers"] = {}
        for i, name in enumerate(tr.marker_names):
            if per_marker[i] >= min_count:
                s = ex.npmi(tc.per_marker[:, i], per_marker[i], tc.experts, n)
                out["markers"][name] = {
                    "n": int(per_marker[i]),
                    "top_experts": _top_experts(s, tc.per_marker[:, i], min_count),
                }
    else:
        out.update({"npmi": None, "top_experts": None, "markers": {}})
    seg_n = np.bincount(tr.segment[tr.segment >= 0], minlength=len(tr.segment_names))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = tc.per_segment / tc.per_segment.sum(axis=-1, keepdims=True)
    segments: dict = {
        "names": tr.segment_names,
        "n_tokens": {name: int(seg_n[i]) for i, name in enumerate(tr.segment_names)},
        "load": {name: shares[:, i] for i, name in enumerate(tr.segment_names)},
        "js_divergence_think_answer": None,
    }
    if "think" in tr.segment_names and "answer" in tr.segment_names:
        from scipy.spatial.distance import jensenshannon

        p = tc.per_segment[:, tr.segment_names.index("think")].astype(np.float64)
        q = tc.per_segment[:, tr.segment_names.index("answer")].astype(np.float64)
        if p.sum() and q.sum():
            segments["js_divergence_think_answer"] = jensenshannon(p, q, base=2, axis=1) ** 2
    out["segments"] = segments
    return out


def _coactivation_summary(counts: np.ndarray, baseline: np.ndarray, min_count: int, n: int = 3) -> dict:
    """Per layer: the largest P(E_j | E_i) and lift P / P0 over experts chosen ≥ `min_count` times, and the
    `n` pairs of highest P and of highest lift. `counts` `[L, N, N]` (load on the diagonal)."""
    cond = ex.conditional_coactivation(counts)
    n_experts = counts.shape[-1]
    off = ~np.eye(n_experts, dtype=bool)
    support = np.diagonal(counts, axis1=1, axis2=2) >= min_count  # [L, N] rows with support
    usable = off[None] & support[:, :, None] & np.isfinite(cond)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = cond / baseline[None]
    out: dict = {"max_conditional": [], "max_lift": [], "top_pairs": [], "top_pairs_lift": []}
    for layer in range(len(counts)):
        for key, top, values in (
            ("max_conditional", "top_pairs", cond),
            ("max_lift", "top_pairs_lift", lift),
        ):
            flat = np.where(usable[layer], values[layer], -np.inf).ravel()
            best = [b for b in np.argsort(-flat, kind="stable")[:n] if np.isfinite(flat[b])]
            pairs = [
                {
                    "i": int(b // n_experts),
                    "j": int(b % n_experts),
                    "p": float(cond[layer].ravel()[b]),
                    "baseline": float(baseline.ravel()[b]),
                    "lift": float(lift[layer].ravel()[b]),
                }
                for b in best
            ]
            out[top].append(pairs)
            out[key].append(float(flat[best[0]]) if best else None)
    return out


def uniform_baseline(row: dict, n_tokens: int, min_count: int, seed: int) -> dict:
    """Load and co-activation of T tokens routed uniformly under the model's router constraints (seeded)."""
    constraints = RouterConstraints.of(row)
    experts = simulate_uniform(constraints, n_tokens, seed)
    counts = ex.coactivation_counts(experts, constraints.n_experts)[None]
    load = np.diagonal(counts, axis1=1, axis2=2)
    share = load / max(1, load.sum())
    summary = _coactivation_summary(counts, constraints.conditional_matrix(), min_count)
    return {
        "method": f"seeded simulation (seed {seed}) of {n_tokens} tokens routed uniformly under the constraints",
        "entropy": float(ex.normalised_entropy(load)[0]),
        "max_load_ratio": float(share.max() * constraints.n_experts),
        "max_conditional": summary["max_conditional"][0],
        "max_lift": summary["max_lift"][0],
    }


def expert_metrics(
    ep: ex.ExpertPass, row: dict, slug: str, min_count: int, simulated: dict | None = None
) -> tuple[dict, dict]:
    """Load shares load_e = slots(e) / (T k), normalised entropy, max load / (1/N), co-activation against the
    router-aware uniform baseline (P(E_j | E_i) = C_ij / C_ii over experts chosen ≥ `min_count` times, lift
    = P / P0) and OLMoE's rank-adjacent co-activation, token-id specialisation (ours and OLMoE's); plus the
    arrays for the `.npz` (counts)."""
    n_experts, top_k = row["n_routed_experts"], row["top_k"]
    constraints = RouterConstraints.of(row)
    ordered = row.get("weights_dtype") is not None  # id-only engines store the k ids as a set in id order
    load = ep.load.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = load / load.sum(axis=1, keepdims=True)
    experts = {
        "load": share,
        "entropy": ex.normalised_entropy(ep.load),
        "max_load_ratio": share.max(axis=1) * n_experts,
        "load_baseline": {
            "uniform_share": 1 / n_experts,
            "simulated_entropy": (simulated or {}).get("entropy"),
            "simulated_max_load_ratio": (simulated or {}).get("max_load_ratio"),
        },
        "coactivation": None,
    }
    arrays = {"load_counts": ep.load}
    if ep.coactivation is not None:
        summary = _coactivation_summary(ep.coactivation, constraints.conditional_matrix(), min_count)
        olmoe = None
        if ep.adjacent is not None and ordered:
            adj = ex.conditional_coactivation(ep.adjacent)
            off = ~np.eye(n_experts, dtype=bool)
            with np.errstate(invalid="ignore"):
                olmoe = {
                    "definition": "OLMoE-style: rank-adjacent experts of the weight-ordered top-k only",
                    "mean_conditional": [float(np.nanmean(a[off])) for a in adj],
                    "mean_conditional_all_pairs": [
                        float(np.nanmean(c[off])) for c in ex.conditional_coactivation(ep.coactivation)
                    ],
                }
            arrays["coactivation_adjacent_counts"] = ep.adjacent
        experts["coactivation"] = {
            "file": f"coactivation-{slug}.npz",
            "independent_baseline": (top_k - 1) / (n_experts - 1) if n_experts > 1 else None,
            "baseline": constraints.describe(),
            "simulated": simulated,
            "min_support": min_count,
            **summary,
            "olmoe": olmoe,
        }
        arrays["coactivation_counts"] = ep.coactivation
    special = None
    if ep.ranks is not None:
        per = ep.specialisation
        eligible = ep.ranks.eligible
        special = {
            "min_count": min_count,
            "n_token_ids": int(eligible.sum()),
            "n_occurrences": int(ep.ranks.occurrences[eligible].sum()),
            "top1": None
            if not ordered
            else {
                "share": [p["top1"] for p in per],
                "shuffled": [p["top1_shuffled"] for p in per],
                "random": 1 / n_experts,
            },
            "topk": {
                "share": [p["topk"] for p in per],
                "shuffled": [p["topk_shuffled"] for p in per],
                "random": top_k / n_experts,
            },
            "olmoe": {
                "definition": "OLMoE's: mean over all token ids, singletons included, of the share of a token "
                "id's occurrences on its most frequent top-1 (top-k) expert",
                "n_token_ids": len(ep.ranks.occurrences),
                "n_singletons": int((ep.ranks.occurrences == 1).sum()),
                "top1_share": [p["olmoe_top1"] for p in per] if ordered else None,
                "topk_share": [p["olmoe_topk"] for p in per],
            },
        }
    return {"experts": experts, "token_specialisation": special}, arrays
