"""The routing-only sense probe, calibrated: against MFS, a within-lemma label-permutation null, and
lexical-only nearest neighbours (context words, token identity), so that "beats its baselines" means that
routing carries sense beyond what the words around the target and its tokens already tell.
"""

from __future__ import annotations

import numpy as np

from atlas_build.metrics.estimators.identity import TargetIdentity
from atlas_build.metrics.estimators.overlap import Targets, pair_overlap
from atlas_build.metrics.estimators.senses import BootstrapOptions, SenseCorpus, _split
from atlas_build.metrics.estimators.stats import (
    cluster_bootstrap,
    cluster_sums,
    monte_carlo_interval,
    within_group_permutations,
)

LEXICAL_PROBES = ("context_words", "token_identity", "lexical")
# Label permutations are scored in chunks: bounds the `[chunk, examples, senses]` vote table.
PERMUTATION_CHUNK = 64


class NearestNeighbour:
    """Leave-one-out nearest neighbours within the lemma for one similarity, fixed; labels may vary.

    For each query example the tied best candidates (the maximum similarity among the lemma's other
    examples) are kept, so any labelling is scored with one `np.bincount`.
    """

    def __init__(self, query: np.ndarray, cand: np.ndarray, score: np.ndarray, n: int, n_local: int):
        order = np.lexsort((-score, query))
        query, cand, score = query[order], cand[order], score[order]
        first = np.flatnonzero(np.r_[True, query[1:] != query[:-1]]) if len(query) else np.zeros(0, int)
        best = np.repeat(score[first], np.diff(np.r_[first, len(query)]))
        tied = score >= best - 1e-9
        self.query, self.cand = query[tied], cand[tied]
        self.n, self.n_local = n, n_local

    def predict(self, labels: np.ndarray) -> np.ndarray:
        """Predicted label `[..., n]` for labellings `[..., n]`: the most frequent label among the tied
        neighbours, ties to the lowest label (the lowest WordNet sense number)."""
        labels = np.asarray(labels)
        lead = labels.shape[:-1]
        flat = labels.reshape(-1, self.n)
        r = len(flat)
        codes = (np.arange(r)[:, None] * self.n + self.query[None, :]) * self.n_local + flat[:, self.cand]
        votes = np.bincount(codes.ravel(), minlength=r * self.n * self.n_local)
        return votes.reshape(r, self.n, self.n_local).argmax(axis=-1).reshape(*lead, self.n)


def sense_probe(
    targets: Targets, corpus: SenseCorpus, options: BootstrapOptions, identity: TargetIdentity | None = None
) -> dict:
    """Leave-one-out nearest-neighbour sense classification from routing alone, with its baselines.

    Among the other examples of the same lemma, the prediction for example x is the sense of its nearest
    neighbour by sim(x, y) = Σ_l |E_x,l ∩ E_y,l| (shared experts summed over MoE layers; averaged over
    sub-token pairs for `--target all`). Ties: the sense most frequent among the tied neighbours, then the
    lowest WordNet sense number. Evaluated on lemmas with ≥ 2 senses among their routed examples.

    Baselines (same rule, same examples): MFS, the sense most frequent among the lemma's other examples;
    a null, the probe's accuracy after permuting the sense labels within each lemma (R permutations:
    the null mean, its 2.5–97.5% range, and p = (1 + #{acc* ≥ acc}) / (R + 1) with its Monte Carlo
    interval); lexical nearest neighbours by context-word Jaccard, by the number of matching token-identity
    features (target ids, surface form, left and right neighbour token), and by their sum. CIs of every
    accuracy and of probe − baseline: one cluster bootstrap over lemmas.
    """
    present = np.flatnonzero(targets.present)
    group, local = corpus.group[present], corpus.local_sense[present]
    n_local = int(local.max()) + 1 if len(local) else 1
    pair_codes = np.unique(group * n_local + local)
    senses_per_group = np.bincount(pair_codes // n_local, minlength=corpus.n_groups)
    keep = senses_per_group[group] >= 2
    present, group, local = present[keep], group[keep], local[keep]
    empty = {"n_examples": 0, "n_lemmas": 0, "accuracy": None, "mfs_accuracy": None, "difference": None}
    if not len(present):
        return empty
    order = np.argsort(group, kind="stable")
    present, group, local = present[order], group[order], local[order]
    n = len(present)
    end = np.searchsorted(group, group, side="right")
    partners = end - np.arange(n) - 1  # all unordered pairs i < j within a lemma
    ia = np.repeat(np.arange(n), partners)
    ib = ia + 1 + (np.arange(partners.sum()) - np.repeat(np.cumsum(partners) - partners, partners))
    overlap, _ = pair_overlap(targets, present[ia], targets, present[ib])

    def neighbours(sim: np.ndarray) -> NearestNeighbour:
        return NearestNeighbour(np.r_[ia, ib], np.r_[ib, ia], np.r_[sim, sim], n, n_local)

    routing_nn = neighbours(overlap.sum(axis=1))
    probe = routing_nn.predict(local)
    group_counts = np.bincount(group * n_local + local, minlength=corpus.n_groups * n_local)
    others = group_counts.reshape(corpus.n_groups, n_local)[group].copy()
    others[np.arange(n), local] -= 1
    mfs = others.argmax(axis=1)

    lexical_sims = {"context_words": corpus.context_jaccard(present[ia], present[ib])}
    if identity is not None:
        matches = identity.pair_features(present[ia], present[ib]).sum(axis=1).astype(np.float64)
        lexical_sims["token_identity"] = matches
        lexical_sims["lexical"] = matches + lexical_sims["context_words"]
    lexical = {name: neighbours(sim).predict(local) for name, sim in lexical_sims.items()}

    correct = np.column_stack(
        [np.ones(n), probe == local, mfs == local, *(pred == local for pred in lexical.values())]
    ).astype(np.float64)
    sums = cluster_sums(group, correct, corpus.n_groups)
    sums = sums[sums[:, 0] > 0]
    n_lex = len(lexical)

    def estimator(t):
        acc = t[..., 1:] / t[..., :1]
        return np.concatenate([acc, acc[..., :1] - acc[..., 1:]], axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed + 4
    )
    parts = _split(est, low, high, [None] * (2 * (2 + n_lex) - 1))
    acc, mfs_acc, lex_acc = parts[0], parts[1], parts[2 : 2 + n_lex]
    diff_mfs, diff_lex = parts[2 + n_lex], parts[3 + n_lex :]
    null = permutation_null(routing_nn, local, group, acc["estimate"], options)
    lexical_out = {
        name: {"accuracy": a, "difference": d} for name, a, d in zip(lexical, lex_acc, diff_lex, strict=True)
    }
    beats_lexical = all(d["ci_low"] is not None and d["ci_low"] > 0 for d in diff_lex) if diff_lex else None
    return {
        "n_examples": n,
        "n_lemmas": len(sums),
        "accuracy": acc,
        "mfs_accuracy": mfs_acc,
        "difference": diff_mfs,
        "null": null,
        "lexical": lexical_out,
        "calibrated": {
            "beats_mfs": bool(diff_mfs["ci_low"] > 0),
            "beats_null": None
            if null is None
            else bool(null["p_value_interval"][1] < 1 - options.confidence),
            "beats_lexical": beats_lexical,
        },
    }


def permutation_null(
    nn: NearestNeighbour, local: np.ndarray, group: np.ndarray, accuracy: float, options: BootstrapOptions
) -> dict | None:
    """The probe's accuracy when sense labels are permuted within each lemma (routing kept)."""
    r_total = options.n_permutations
    if r_total < 1:
        return None
    rng = np.random.default_rng(options.seed + 5)
    null = np.empty(r_total)
    for lo in range(0, r_total, PERMUTATION_CHUNK):
        r = min(PERMUTATION_CHUNK, r_total - lo)
        labels = within_group_permutations(local, group, r, rng)
        null[lo : lo + r] = (nn.predict(labels) == labels).mean(axis=1)
    p = (1 + int((null >= accuracy - 1e-12).sum())) / (r_total + 1)
    alpha = (1 - options.confidence) / 2
    return {
        "method": "probe accuracy after permuting sense labels within each lemma (routing kept)",
        "n_permutations": r_total,
        "mean": float(null.mean()),
        "range": [float(np.quantile(null, alpha)), float(np.quantile(null, 1 - alpha))],
        "accuracy_minus_null_mean": float(accuracy - null.mean()),
        "p_value": p,
        "p_value_interval": monte_carlo_interval(p, r_total, options.confidence),
    }
