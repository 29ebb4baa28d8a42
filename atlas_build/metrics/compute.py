"""`compute_metrics`: every metric of every selected model of an atlas, as the `metrics.json` dictionary."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from atlas_build.atlas.schema import SENSE_PAIRS, SENSES, SUBSTITUTIONS, TRACES
from atlas_build.metrics import experts as ex
from atlas_build.metrics.corpora import UserCorpus, load_user_corpora
from atlas_build.metrics.overlap import TARGET_MODES, select_targets, target_rows_table
from atlas_build.metrics.senses import (
    BootstrapOptions,
    SenseCorpus,
    context_adjusted,
    load_sense_corpus,
    over_null,
    sense_pair_kappa,
    sense_pair_overlap,
    sense_probe,
    substitution_overlap,
)
from atlas_build.metrics.source import AtlasSource, SourceError

log = logging.getLogger(__name__)

FORMAT = "routing-atlas-metrics"
FORMAT_VERSION = 1
TOP_EXPERTS = 5

FORMULAS = {
    "kappa": "κ = (o − k²/N) / (k − k²/N), o = |E_a ∩ E_b| of the two top-k sets (1: identical, 0: chance, "
    "−k/(N−k): disjoint)",
    "target_all": "--target all: κ_pair = mean over all (i, j) target sub-token pairs of κ(E_a,i, E_b,j)",
    "delta": "Δκ[l] = mean κ[l] over same-sense pairs − mean κ[l] over different-sense pairs; layer mean "
    "= mean over MoE layers",
    "bootstrap": "95% CIs: cluster bootstrap (scipy.stats.bootstrap) resampling lemmas (lemma + pos) with "
    "replacement; BCa up to 1000 lemmas, percentile above (BCa's jackknife is quadratic in the lemmas)",
    "permutation": "p-value: two-sided, (1 + #{|Δ*| ≥ |Δ|}) / (R + 1); Δ* recomputed after permuting the "
    "examples' synset labels within each lemma (keeps each lemma's sense counts and the pairs' shared "
    "examples); per-layer p also Benjamini–Hochberg adjusted",
    "jaccard": "J = |W_a ∩ W_b| / |W_a ∪ W_b|, W = lower-cased word types of the sentence with the target "
    "span removed",
    "context_adjusted": "β_same from least squares κ = β0 + β_same·same + Σ_s γ_s·[stratum(J) = s] "
    "(+ β_J·J when strata are deciles); strata: distinct J values (≤ 10) or deciles of J",
    "over_null": "Δκ(model) − Δκ(null) on the pairs both routed, null = a random-init model of the same "
    "model_type, scoring function and top-k method; joint cluster bootstrap",
    "substitution": "κ between the base example's target and the substituted target; Δ = mean κ(synonym) "
    "− mean κ(other-sense)",
    "load": "load_e = #top-k slots with expert e / (T·k)",
    "entropy": "H = −Σ_e load_e log load_e / log N (1 = balanced)",
    "coactivation": "P(E_j | E_i) = #tokens with i and j in the top-k / #tokens with i; independent "
    "uniform routing gives (k − 1)/(N − 1); heatmaps show log2 lift = log2(P(E_j | E_i) / P(E_j)), "
    "P(E_j) = #tokens with j / T (0 = independent of each other)",
    "token_specialisation": "for token ids with ≥ m occurrences: top-1 share = max_e #{first expert = e} "
    "/ n_t, top-k share = max_e #{e ∈ top-k} / n_t, averaged over token ids; baselines 1/N, k/N and the same "
    "shares after permuting expert rows across tokens (seeded; same loads and n_t)",
    "npmi": "nPMI(M, e) = log(p(M, e) / (p(M) p(e))) / −log p(M, e) over trace tokens, M = the token is "
    "a reasoning marker, e = expert e in its top-k (−1: never together); top experts: among those seen with "
    "markers ≥ m times",
    "js_divergence": "JS(think ‖ answer) of the expert load distributions, base 2 (0 = equal, 1 = disjoint)",
    "probe": "leave-one-out nearest neighbour within the lemma by sim = Σ_l |E_x,l ∩ E_y,l|; ties: most "
    "frequent sense among tied neighbours, then lowest sense number; MFS baseline: majority sense among the "
    "lemma's other examples",
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

    def bootstrap(self) -> BootstrapOptions:
        return BootstrapOptions(self.n_bootstrap, self.n_permutations, self.confidence, self.seed)


@dataclass
class MetricsResult:
    """The `metrics.json` dictionary and the arrays too large for it (per model slug)."""

    metrics: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def is_synthetic(row: dict) -> bool:
    return row.get("model_id") == "synthetic" or row.get("engine") == "synthetic"


def find_null(row: dict, rows: Sequence[dict]) -> dict | None:
    """A random-init model of the same architecture and routing: same model_type, scoring_func and
    topk_method; among several, the one closest in (N, k, MoE layers)."""
    candidates = [
        r
        for r in rows
        if r["random_init"]
        and r["model_slug"] != row["model_slug"]
        and r["model_type"] == row["model_type"]
        and r["scoring_func"] == row["scoring_func"]
        and r["topk_method"] == row["topk_method"]
    ]

    def distance(r):
        return (
            r["n_routed_experts"] != row["n_routed_experts"],
            r["top_k"] != row["top_k"],
            len(r["moe_layers"]) != len(row["moe_layers"]),
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


def survival(sp: dict, moe_layers: list[int], random_init: bool) -> dict:
    """Which effects survive the controls: a CI that excludes 0 with the same sign as the raw effect, for the
    layer mean and per layer, after context adjustment and over the null model (when there is one)."""
    raw = _sign(sp["layer_mean"]["delta"])
    adj = _sign(sp["context_adjusted"]["layer_mean"]["delta"]) if sp.get("context_adjusted") else None
    null = sp.get("over_null")
    nul = _sign(null["layer_mean"]["delta"]) if null else None
    survives = bool(raw and adj == raw and (nul == raw if null else True))

    def layer_signs(block):
        if not block:
            return [None] * len(moe_layers)
        return [
            _sign({"ci_low": lo, "ci_high": hi})
            for lo, hi in zip(block["ci_low"], block["ci_high"], strict=True)
        ]

    raw_l = layer_signs(sp["delta"])
    adj_l = (
        layer_signs(sp["context_adjusted"]["delta"]) if sp.get("context_adjusted") else [None] * len(raw_l)
    )
    if null and null.get("delta"):
        null_l = layer_signs(null["delta"])
    else:
        null_l = [nul] * len(raw_l) if null else [None] * len(raw_l)
    layers = [
        layer
        for layer, r, a, n in zip(moe_layers, raw_l, adj_l, null_l, strict=True)
        if r and a == r and (n == r if null else True)
    ]
    return {
        "raw": _WORD[raw],
        "context_adjusted": _WORD[adj],
        "over_null": _WORD[nul]
        if null
        else ("model is random-init" if random_init else "no null model in atlas"),
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


def expert_metrics(ep: ex.ExpertPass, row: dict, slug: str, min_count: int) -> tuple[dict, dict]:
    """Load shares load_e = slots(e) / (T k), normalised entropy, max load / (1/N), co-activation summary
    (P(E_j | E_i) = C_ij / C_ii over experts chosen ≥ `min_count` times) and token-id specialisation;
    plus the arrays for the `.npz` (counts)."""
    n_experts, top_k = row["n_routed_experts"], row["top_k"]
    load = ep.load.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = load / load.sum(axis=1, keepdims=True)
    experts = {
        "load": share,
        "entropy": ex.normalised_entropy(ep.load),
        "max_load_ratio": share.max(axis=1) * n_experts,
        "coactivation": None,
    }
    arrays = {"load_counts": ep.load}
    if ep.coactivation is not None:
        cond = ex.conditional_coactivation(ep.coactivation)
        n_layers = len(cond)
        off = ~np.eye(n_experts, dtype=bool)
        support = np.diagonal(ep.coactivation, axis1=1, axis2=2) >= min_count  # [L, N] rows with support
        masked = np.where(off[None] & support[:, :, None], cond, -np.inf)
        top_pairs, max_cond = [], []
        for layer in range(n_layers):
            flat = masked[layer].ravel()
            best = np.argsort(-flat, kind="stable")[:3]
            pairs = [
                {"i": int(b // n_experts), "j": int(b % n_experts), "p": float(flat[b])}
                for b in best
                if np.isfinite(flat[b])
            ]
            top_pairs.append(pairs)
            max_cond.append(pairs[0]["p"] if pairs else None)
        experts["coactivation"] = {
            "file": f"coactivation-{slug}.npz",
            "independent_baseline": (top_k - 1) / (n_experts - 1) if n_experts > 1 else None,
            "min_support": min_count,
            "max_conditional": max_cond,
            "top_pairs": top_pairs,
        }
        arrays["coactivation_counts"] = ep.coactivation
    special = None
    if ep.ranks is not None:
        per = ep.specialisation
        special = {
            "min_count": min_count,
            "n_token_ids": len(ep.ranks.occurrences),
            "n_occurrences": int(ep.ranks.occurrences.sum()),
            # Id-only engines (vLLM) store the k ids as a set in id order: their first id is no top-1.
            "top1": None
            if row.get("weights_dtype") is None
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


def compute_metrics(
    source,
    *,
    models: Sequence[str] | None = None,
    revision: str | None = None,
    options: MetricsOptions | None = None,
    cache_dir=None,
) -> MetricsResult:
    """Compute every metric for the selected models (default: all) of the atlas at `source`."""
    options = options or MetricsOptions()
    if options.target not in TARGET_MODES:
        raise ValueError(f"target must be one of {TARGET_MODES}, got {options.target!r}")
    boot = options.bootstrap()
    src = AtlasSource(source, revision=revision, cache_dir=cache_dir)
    rows = src.models()
    by_slug = {r["model_slug"]: r for r in rows}
    if models:
        unknown = [m for m in models if m not in by_slug]
        if unknown:
            raise SourceError(f"unknown model slug(s) {unknown}; the atlas has: {sorted(by_slug) or 'none'}")
    selected = list(dict.fromkeys(models)) if models else sorted(by_slug)

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

    kappas: dict[str, np.ndarray] = {}
    # The user's corpora (wic, swords, jsonl): the same metrics, once per corpus, reported under "corpora".
    user_corpora = load_user_corpora(src)
    user_kappas: dict[tuple[str, str], np.ndarray] = {}

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
                kappa = kappa_of(slug, targets)
                sp = sense_pair_overlap(kappa, corpus, boot)
                sp["context_adjusted"] = context_adjusted(kappa, corpus, boot)
                null = None if row["random_init"] else find_null(row, rows)
                sp["over_null"] = None
                if null is not None:
                    sp["over_null"] = {
                        "null_model": null["model_slug"],
                        **over_null(kappa, kappa_of(null["model_slug"]), corpus, boot),
                    }
                sp["peak"] = _peak(sp, row["moe_layers"])
                sp["survives"] = survival(sp, row["moe_layers"], bool(row["random_init"]))
                entry["sense_pairs"] = sp
                entry["probe"] = sense_probe(targets, corpus, boot)
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
                uc.kind: user_corpus_metrics(uc, slug, routing, src, by_slug, rows, options, user_kappas)
                for uc in user_corpora
            }
            ep = job.result()
        finally:
            job.close()
        parts, model_arrays = expert_metrics(ep, row, slug, options.min_count)
        entry.update(parts)
        entry["traces"] = trace_metrics(ep, options.min_count)
        out_models[slug] = entry
        arrays[slug] = model_arrays

    metrics = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "revision": revision,
        "options": {
            "target": options.target,
            "min_count": options.min_count,
            "n_bootstrap": options.n_bootstrap,
            "n_permutations": options.n_permutations,
            "confidence": options.confidence,
            "seed": options.seed,
        },
        "synthetic": any(is_synthetic(by_slug[s]) for s in selected) or _synthetic_corpus(senses),
        "random_init_models": [s for s in selected if by_slug[s]["random_init"]],
        "corpus": {
            "senses": senses.num_rows if senses is not None else None,
            "sense_pairs": pairs.num_rows if pairs is not None else None,
            "substitutions": substitutions.num_rows if substitutions is not None else None,
            "traces": src.table(TRACES).num_rows if src.has(TRACES) else None,
        },
        "corpora": {uc.kind: uc.counts for uc in user_corpora},
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
    rows: Sequence[dict],
    options: MetricsOptions,
    kappas: dict[tuple[str, str], np.ndarray],
) -> dict:
    """The sense-pair block (with its controls, peak and survival), the probe (labelled corpora only) and the
    substitution block of one user's corpus for one model: the WordNet functions, on that corpus's rows."""
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
        if (uc.kind, name) not in kappas:
            targets = targets if targets is not None else targets_of(name)
            m = by_slug[name]
            kappas[(uc.kind, name)] = sense_pair_kappa(targets, uc.corpus, m["top_k"], m["n_routed_experts"])
        return kappas[(uc.kind, name)]

    targets = targets_of(slug, routing)
    out: dict = {"sense_pairs": None, "probe": None, "substitutions": None}
    if uc.has_pairs:
        kappa = kappa_of(slug, targets)
        sp = sense_pair_overlap(kappa, uc.corpus, boot)
        sp["context_adjusted"] = context_adjusted(kappa, uc.corpus, boot)
        null = None if row["random_init"] else find_null(row, rows)
        sp["over_null"] = None
        if null is not None:
            sp["over_null"] = {
                "null_model": null["model_slug"],
                **over_null(kappa, kappa_of(null["model_slug"]), uc.corpus, boot),
            }
        sp["peak"] = _peak(sp, row["moe_layers"])
        sp["survives"] = survival(sp, row["moe_layers"], bool(row["random_init"]))
        out["sense_pairs"] = sp
        if uc.labelled:
            out["probe"] = sense_probe(targets, uc.corpus, boot)
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
