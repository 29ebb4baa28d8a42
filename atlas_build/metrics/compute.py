"""`compute_metrics`: every metric of every selected model of an atlas, as the `metrics.json` dictionary."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS, TRACES
from atlas_build.metrics import experts as ex
from atlas_build.metrics.baselines import RouterConstraints, simulate_uniform
from atlas_build.metrics.controls import CONTROL_NAMES, NullModel, pair_controls
from atlas_build.metrics.corpora import USER_CONFIGS, UserCorpus, load_user_corpora
from atlas_build.metrics.identity import TargetIdentity, target_identity
from atlas_build.metrics.overlap import TARGET_MODES, select_targets, target_rows_table
from atlas_build.metrics.probe import sense_probe
from atlas_build.metrics.provenance import Provenance
from atlas_build.metrics.senses import (
    BootstrapOptions,
    SenseCorpus,
    load_sense_corpus,
    sense_pair_kappa,
    sense_pair_overlap,
    substitution_overlap,
)
from atlas_build.metrics.source import AtlasSource, SourceError

log = logging.getLogger(__name__)

FORMAT = "routing-atlas-metrics"
FORMAT_VERSION = 2
TOP_EXPERTS = 5

FORMULAS = {
    "kappa": "κ = (o − k²/N) / (k − k²/N), o = |E_a ∩ E_b| of the two top-k sets (1: identical, 0: chance, "
    "−k/(N−k): disjoint)",
    "target_all": "--target all: κ_pair = mean over all (i, j) target sub-token pairs of κ(E_a,i, E_b,j)",
    "delta": "Δκ[l] = mean κ[l] over same-sense pairs − mean κ[l] over different-sense pairs; layer mean "
    "= mean over MoE layers",
    "bootstrap": "95% CIs: cluster bootstrap (scipy.stats.bootstrap) resampling lemmas (lemma + pos) with "
    "replacement, every replicate in float64; BCa up to 1000 lemmas, percentile above (BCa's jackknife is "
    "quadratic in the lemmas)",
    "permutation": "p-value: two-sided, (1 + b) / (R + 1), b = #{|Δ*| ≥ |Δ|} over R permutations of the "
    "examples' synset labels within each lemma (keeps each lemma's sense counts and the pairs' shared "
    "examples); per-layer p also Benjamini–Hochberg adjusted; p_value_interval: exact binomial (Clopper–"
    "Pearson) 95% interval of the true p given b of R (its Monte Carlo error); printed only to the digits "
    "that interval supports",
    "jaccard": "J = |W_a ∩ W_b| / |W_a ∪ W_b|, W = lower-cased word types of the sentence with the target "
    "span removed",
    "controls": "each control is β_same of a float64 least-squares fit, per layer, κ = β0 + β_same·same + "
    "Σ dummies of the control's strata (+ linear terms); one dummy per non-empty level except the most "
    "frequent, redundant columns dropped, a design where `same` is a combination of the strata refused; CIs "
    "from one cluster bootstrap of the per-lemma normal equations shared by all controls",
    "context_words": "strata: each distinct J (≤ 10 values) or deciles of J plus a linear J term",
    "token_identity": "strata: the 16 cells of (same target token-id sequence, same target surface form "
    "(exact text of the span), same left neighbour token id, same right neighbour token id; a missing "
    "neighbour equals only a missing one), from each model's own routing rows",
    "null_model": "Δκ(model) − Δκ(null) on the pairs both routed, null = a random-init model of the same "
    "model_type, scoring function and top-k method (for a random-init model: another seed of it, where the "
    "control must give ≈ 0); joint cluster bootstrap",
    "all": "context_words + token_identity strata in one fit; minus the same fit on the null model when "
    "there is one",
    "survives": "an effect survives when the CI of raw Δκ excludes 0 and the CI of every applicable control "
    "excludes 0 with the same sign; per layer and for the layer mean",
    "context_adjusted": "= controls.context_words (kept for older readers)",
    "over_null": "= controls.null_model (kept for older readers)",
    "substitution": "κ between the base example's target and the substituted target; Δ = mean κ(synonym) "
    "− mean κ(other-sense)",
    "load": "load_e = #top-k slots with expert e / (T·k); uniform routing (any symmetric constraint): 1/N",
    "entropy": "H = −Σ_e load_e log load_e / log N (1 = balanced)",
    "coactivation": "P(E_j | E_i) = #tokens with i and j in the top-k / #tokens with i; baseline P0(E_j | E_i) "
    "of uniform routing under the router's constraints: (k − 1)/(M − 1) within a group and "
    "(k − 1)/(M − 1)·(topk_group − 1)/(n_group − 1) across groups, M = topk_group·N/n_group (no groups: "
    "(k − 1)/(N − 1)); lift = P / P0; simulated: the same statistics of a seeded uniform routing under "
    "the constraints with as many tokens; heatmaps show log2 P(E_j | E_i) / P(E_j)",
    "coactivation_olmoe": "OLMoE-style (allenai/OLMoE scripts/run_moe_analysis.py): only rank-adjacent "
    "experts of the weight-ordered top-k count as co-activated (ranks r and r + 1); P_adj(E_j | E_i) = "
    "#tokens with i and j at adjacent ranks / #tokens with i; mean over i ≠ j",
    "token_specialisation": "for token ids with ≥ m occurrences: top-1 share = max_e #{first expert = e} "
    "/ n_t, top-k share = max_e #{e ∈ top-k} / n_t, averaged over token ids; baselines 1/N, k/N and the same "
    "shares after permuting expert rows across tokens (seeded; same loads and n_t)",
    "token_specialisation_olmoe": "OLMoE's definition: the top-1 (top-k) share averaged over ALL token ids, "
    "singletons included (a singleton's share is 1, so this is higher than ours)",
    "npmi": "nPMI(M, e) = log(p(M, e) / (p(M) p(e))) / −log p(M, e) over trace tokens, M = the token is "
    "a reasoning marker, e = expert e in its top-k (−1: never together); top experts: among those seen with "
    "markers ≥ m times",
    "js_divergence": "JS(think ‖ answer) of the expert load distributions, base 2 (0 = equal, 1 = disjoint)",
    "probe": "leave-one-out nearest neighbour within the lemma by sim = Σ_l |E_x,l ∩ E_y,l|; ties: most "
    "frequent sense among tied neighbours, then lowest sense number; baselines: MFS (majority sense among the "
    "lemma's other examples), a null (the same probe after permuting sense labels within each lemma; p = "
    "(1 + #{acc* ≥ acc}) / (R + 1)), and lexical nearest neighbours by context-word Jaccard, by the number of "
    "matching token-identity features, and by their sum",
}


@dataclass
class MetricsOptions:
    target: str = "last"
    min_count: int = 5
    n_bootstrap: int = 2000
    n_permutations: int = 999
    confidence: float = 0.95
    seed: int = 0
    budget_bytes: int = 1 << 30
    # Check the data files against manifest.json (sha256) and refuse altered ones; off: the report says so.
    verify: bool = True

    def bootstrap(self) -> BootstrapOptions:
        return BootstrapOptions(self.n_bootstrap, self.n_permutations, self.confidence, self.seed)

    def public(self) -> dict:
        """The options that change numbers (recorded in metrics.json; `budget_bytes` only changes memory)."""
        keys = ("target", "min_count", "n_bootstrap", "n_permutations", "confidence", "seed")
        return {key: getattr(self, key) for key in keys}

    def seeds(self) -> dict[str, int]:
        """Every seed the metrics use, derived from `seed`."""
        s = self.seed
        return {
            "bootstrap_raw_and_substitutions": s,
            "permutation_test": s + 1,
            "bootstrap_controls": s + 2,
            "bootstrap_probe": s + 4,
            "probe_label_permutations": s + 5,
            "token_shuffle_baseline": s,
            "uniform_routing_simulation": s + 6,
        }


@dataclass
class MetricsResult:
    """The `metrics.json` dictionary and the arrays too large for it (per model slug)."""

    metrics: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def is_synthetic(row: dict) -> bool:
    return row.get("model_id") == "synthetic" or row.get("engine") == "synthetic"


def find_null(row: dict, rows: Sequence[dict]) -> dict | None:
    """A random-init model of the same architecture and routing: same model_type, scoring_func and
    topk_method; among several, the one closest in (N, k, MoE layers). For a random-init model: another
    random-init model of it (another seed), preferring the same model id."""
    candidates = [
        r
        for r in rows
        if r["random_init"]
        and r["model_slug"] != row["model_slug"]
        and r["model_type"] == row["model_type"]
        and r["scoring_func"] == row["scoring_func"]
        and r["topk_method"] == row["topk_method"]
        and not (row["random_init"] and r.get("seed") == row.get("seed") and r["model_id"] == row["model_id"])
    ]

    def distance(r):
        return (
            r["n_routed_experts"] != row["n_routed_experts"],
            r["top_k"] != row["top_k"],
            len(r["moe_layers"]) != len(row["moe_layers"]),
            r["model_id"] != row["model_id"],
            r["model_slug"],
        )

    return min(candidates, key=distance) if candidates else None


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


def model_info(row: dict) -> dict:
    keys = [
        "model_id",
        "revision",
        "architecture",
        "model_type",
        "n_routed_experts",
        "top_k",
        "n_shared_experts",
        "scoring_func",
        "topk_method",
        "moe_layers",
        "total_params",
        "active_params",
        "engine",
        "weights_dtype",
        "random_init",
    ]
    info = {k: row.get(k) for k in keys}
    info["n_moe_layers"] = len(row["moe_layers"])
    info["synthetic"] = is_synthetic(row)
    return info


def sense_pair_metrics(
    kappa: np.ndarray,
    corpus: SenseCorpus,
    identity: TargetIdentity | None,
    row: dict,
    boot: BootstrapOptions,
    null: NullModel | None = None,
) -> dict:
    """The `sense_pairs` block of one model: raw Δκ, the named controls, the peak layer and survival."""
    sp = sense_pair_overlap(kappa, corpus, boot)
    sp["controls"] = pair_controls(kappa, corpus, identity, boot, null)
    # Older readers (the publisher's changelog, earlier cards) read these two names.
    sp["context_adjusted"] = sp["controls"]["context_words"]
    sp["over_null"] = None
    if "null_model" in sp["controls"]:
        result = sp["controls"]["null_model"]
        sp["over_null"] = {
            "null_model": result["null_model"],
            "n_pairs": result["n_pairs"],
            "layer_mean": result["layer_mean"],
            "delta": result["delta"],
        }
    sp["peak"] = _peak(sp, row["moe_layers"])
    sp["survives"] = survival(sp, row["moe_layers"], bool(row["random_init"]))
    return sp


def compute_metrics(
    source,
    *,
    models: Sequence[str] | None = None,
    revision: str | None = None,
    options: MetricsOptions | None = None,
    cache_dir=None,
) -> MetricsResult:
    """Compute every metric for the selected models (default: all) of the atlas at `source`.

    Raises:
        SourceError: the source cannot be read, a model slug is unknown, or (`IntegrityError`) its files do
            not match its manifest.json (unless `options.verify` is off).
    """
    options = options or MetricsOptions()
    if options.target not in TARGET_MODES:
        raise ValueError(f"target must be one of {TARGET_MODES}, got {options.target!r}")
    boot = options.bootstrap()
    src = AtlasSource(source, revision=revision, cache_dir=cache_dir)
    provenance = Provenance(source, revision, verify=options.verify)
    rows = src.models()
    by_slug = {r["model_slug"]: r for r in rows}
    if models:
        unknown = [m for m in models if m not in by_slug]
        if unknown:
            raise SourceError(f"unknown model slug(s) {unknown}; the atlas has: {sorted(by_slug) or 'none'}")
    selected = list(dict.fromkeys(models)) if models else sorted(by_slug)
    nulls = {slug: find_null(by_slug[slug], rows) for slug in selected}
    read = {MODELS, SENSES, SENSE_PAIRS, SUBSTITUTIONS, TRACES, *USER_CONFIGS}
    read |= {ROUTING_PREFIX + s for s in selected} | {
        ROUTING_PREFIX + n["model_slug"] for n in nulls.values() if n
    }
    provenance.start({c for c in read if src.has(c)})

    try:
        senses, pairs = src.table(SENSES), src.table(SENSE_PAIRS)
        substitutions = src.table(SUBSTITUTIONS)
        corpus: SenseCorpus | None = None
        if senses is not None and pairs is not None and pairs.num_rows:
            corpus = load_sense_corpus(senses, pairs)
        notes: list[str] = []
        if corpus is None:
            notes.append("no sense pairs in the atlas: sense-pair overlap and the probe are not computed")
        if substitutions is None:
            notes.append("no substitutions config: substitution overlap is not computed")
        if not src.has(TRACES):
            notes.append("no reasoning traces in the atlas: the traces metrics are null")
        if not options.verify:
            notes.append("the data files were NOT checked against manifest.json (--no-verify)")
        # The user's corpora (wic, swords, jsonl): the same metrics, once per corpus, under "corpora".
        user_corpora = load_user_corpora(src)
        user_cache: dict = {}

        kappas: dict[str, np.ndarray] = {}
        identities: dict[str, TargetIdentity] = {}

        def sense_targets(slug: str, routing=None):
            routing = routing if routing is not None else src.routing(slug)
            n_experts = by_slug[slug]["n_routed_experts"]
            return select_targets(
                target_rows_table(routing, SENSES), corpus.example_ids, options.target, n_experts
            )

        def kappa_of(slug: str, targets=None) -> np.ndarray:
            if slug not in kappas:
                row = by_slug[slug]
                targets = targets if targets is not None else sense_targets(slug)
                kappas[slug] = sense_pair_kappa(targets, corpus, row["top_k"], row["n_routed_experts"])
            return kappas[slug]

        def identity_of(slug: str, routing=None) -> TargetIdentity:
            if slug not in identities:
                routing = routing if routing is not None else src.routing(slug)
                identities[slug] = target_identity(routing, corpus.example_ids, corpus.form)
            return identities[slug]

        out_models: dict[str, dict] = {}
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for slug in selected:
            row = by_slug[slug]
            log.info("metrics for %s", slug)
            routing = src.routing(slug)
            n_experts, top_k, n_layers = row["n_routed_experts"], row["top_k"], len(row["moe_layers"])
            entry: dict = {
                "model": model_info(row),
                "random_init": bool(row["random_init"]),
                "synthetic": is_synthetic(row),
                "n_tokens": routing.num_rows,
                "sense_pairs": None,
                "substitutions": None,
                "probe": None,
            }
            # Large atlases: the per-layer pass runs in forked workers while the sense metrics run here.
            job = ex.ExpertPassJob(
                routing,
                n_experts,
                n_layers,
                top_k,
                min_count=options.min_count,
                seed=options.seed,
                budget_bytes=options.budget_bytes,
            )
            try:
                if corpus is not None:
                    targets = sense_targets(slug, routing)
                    null_row = nulls[slug]
                    null = None
                    if null_row is not None:
                        name = null_row["model_slug"]
                        null = NullModel(name, kappa_of(name), identity_of(name))
                    entry["sense_pairs"] = sense_pair_metrics(
                        kappa_of(slug, targets), corpus, identity_of(slug, routing), row, boot, null
                    )
                    entry["probe"] = sense_probe(targets, corpus, boot, identity_of(slug))
                    if substitutions is not None and substitutions.num_rows:
                        sub_targets = select_targets(
                            target_rows_table(routing, SUBSTITUTIONS),
                            substitutions.column("substitution_id"),
                            options.target,
                            n_experts,
                        )
                        entry["substitutions"] = substitution_overlap(
                            targets, sub_targets, corpus, substitutions, top_k, n_experts, boot
                        )
                entry["corpora"] = {
                    uc.kind: user_corpus_metrics(
                        uc, slug, routing, src, by_slug, nulls[slug], options, user_cache
                    )
                    for uc in user_corpora
                }
                simulated = uniform_baseline(
                    row, routing.num_rows, options.min_count, options.seeds()["uniform_routing_simulation"]
                )
                ep = job.result()
            finally:
                job.close()
            parts, model_arrays = expert_metrics(ep, row, slug, options.min_count, simulated)
            entry.update(parts)
            entry["traces"] = trace_metrics(ep, options.min_count)
            out_models[slug] = entry
            arrays[slug] = model_arrays
    except Exception:
        # Altered files often fail to load at all: say that they do not match the manifest, if so.
        provenance.finish()
        raise
    provenance.finish()
    metrics = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "revision": revision,
        "options": options.public(),
        "provenance": provenance.record(options.seeds(), options.public()),
        "synthetic": any(is_synthetic(by_slug[s]) for s in selected) or _synthetic_corpus(senses),
        "random_init_models": [s for s in selected if by_slug[s]["random_init"]],
        "corpus": {
            "senses": senses.num_rows if senses is not None else None,
            "sense_pairs": pairs.num_rows if pairs is not None else None,
            "substitutions": substitutions.num_rows if substitutions is not None else None,
            "traces": src.table(TRACES).num_rows if src.has(TRACES) else None,
        },
        "corpora": {uc.kind: uc.counts for uc in user_corpora},
        "controls": list(CONTROL_NAMES),
        "formulas": FORMULAS,
        "models": out_models,
        "scale": scale_rows(out_models),
        "notes": notes,
    }
    return MetricsResult(metrics, arrays)


def user_corpus_metrics(
    uc: UserCorpus,
    slug: str,
    routing,
    src: AtlasSource,
    by_slug: dict[str, dict],
    null_row: dict | None,
    options: MetricsOptions,
    cache: dict,
) -> dict:
    """One user's corpus for one model: the sense-pair block (`sense_pair_metrics`: raw Δκ, its controls, peak
    and survival), the probe (labelled corpora only) and the substitution block, from that corpus's rows.

    `cache` keeps each (corpus, model)'s κ and target identity, so a null model's are computed once.
    """
    boot = options.bootstrap()
    row = by_slug[slug]
    n_experts, top_k = row["n_routed_experts"], row["top_k"]

    def targets_of(name: str, routing_rows=None):
        routing_rows = routing_rows if routing_rows is not None else src.routing(name)
        rows_of = target_rows_table(routing_rows, uc.examples_config)
        return select_targets(
            rows_of, uc.corpus.example_ids, options.target, by_slug[name]["n_routed_experts"]
        )

    def kappa_of(name: str, targets=None) -> np.ndarray:
        key = ("kappa", uc.kind, name)
        if key not in cache:
            targets = targets if targets is not None else targets_of(name)
            m = by_slug[name]
            cache[key] = sense_pair_kappa(targets, uc.corpus, m["top_k"], m["n_routed_experts"])
        return cache[key]

    def identity_of(name: str, routing_rows=None) -> TargetIdentity:
        key = ("identity", uc.kind, name)
        if key not in cache:
            routing_rows = routing_rows if routing_rows is not None else src.routing(name)
            cache[key] = target_identity(
                routing_rows, uc.corpus.example_ids, uc.corpus.form, uc.examples_config
            )
        return cache[key]

    targets = targets_of(slug, routing)
    out: dict = {"sense_pairs": None, "probe": None, "substitutions": None}
    if uc.has_pairs:
        null = None
        if null_row is not None:
            name = null_row["model_slug"]
            null = NullModel(name, kappa_of(name), identity_of(name))
        out["sense_pairs"] = sense_pair_metrics(
            kappa_of(slug, targets), uc.corpus, identity_of(slug, routing), row, boot, null
        )
        if uc.labelled:
            out["probe"] = sense_probe(targets, uc.corpus, boot, identity_of(slug, routing))
    if uc.substitutions is not None:
        sub_targets = select_targets(
            target_rows_table(routing, uc.substitutions_config),
            uc.substitutions.column("substitution_id"),
            options.target,
            n_experts,
        )
        out["substitutions"] = substitution_overlap(
            targets, sub_targets, uc.corpus, uc.substitutions, top_k, n_experts, boot, contrast=uc.contrast
        )
    return out


def _synthetic_corpus(senses) -> bool:
    if senses is None or not senses.num_rows:
        return False
    import pyarrow.compute as pc

    return bool(pc.any(pc.equal(senses.column("source"), "synthetic")).as_py())


def _peak(sp: dict, moe_layers: list[int]) -> dict | None:
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
