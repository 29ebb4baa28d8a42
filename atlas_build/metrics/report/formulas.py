"""The formulas of every metric, by name: `metrics.json["formulas"]` and the report's definitions."""

from __future__ import annotations

from atlas_build.metrics.paths.compute import FORMULAS as PATH_FORMULAS
from atlas_build.metrics.scores.compute import FORMULAS as SCORE_FORMULAS

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
    "position": "strata: the unordered pair of the two targets' position buckets, position = token_index of "
    "the first target token in its text (0..7 each, then half-octaves [8, 12), [12, 16), [16, 24), ...)",
    "neighbours": "strata: the 4 cells of (same left neighbour token id, same right neighbour token id), both "
    "neighbours together (a missing neighbour equals only a missing one), from each model's own routing rows",
    "all": "context_words + token_identity + position + neighbours strata in one fit; minus the same fit on "
    "the null model when there is one",
    "explained": "share of the raw effect a control explains = (Δκ_raw − Δκ_control) / Δκ_raw of the layer "
    "mean; also the mean of the per-layer shares over the layers whose raw CI excludes 0 (point estimates)",
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

FORMULAS.update(PATH_FORMULAS)  # routing paths across layers (metrics/paths/compute.py)
FORMULAS.update(SCORE_FORMULAS)  # router scores beyond the top-k (metrics/scores/compute.py)
