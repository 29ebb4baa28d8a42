"""Sense metrics at the target token: sense-pair overlap with its controls, substitutions, routing-only probe.

All pair quantities are per MoE layer; clusters for every interval are lemmas (lemma + part of speech).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.metrics.overlap import Targets, chance_kappa, pair_overlap
from atlas_build.metrics.stats import (
    ClusterIndex,
    bh_adjust,
    cluster_bootstrap,
    cluster_sums,
    label_permutation_test,
)

# Words for the context-overlap control: maximal runs of Unicode letters, digits and '_', lower-cased.
WORD_SPLIT = r"[^\pL\pN_]+"
# Up to this many distinct Jaccard values, each value is its own stratum; beyond, decile bins.
MAX_EXACT_STRATA = 10


@dataclass
class BootstrapOptions:
    n_resamples: int = 2000
    n_permutations: int = 999
    confidence: float = 0.95
    seed: int = 0


@dataclass
class SenseCorpus:
    """The `senses` and `sense-pairs` configs as integer codes, with the context overlap of every pair."""

    example_ids: pa.Array  # [E]
    group: np.ndarray  # [E] lemma+pos cluster code
    n_groups: int
    synset: np.ndarray  # [E] synset code
    local_sense: np.ndarray  # [E] rank of the synset among its lemma's, by WordNet sense number
    pair_a: np.ndarray  # [P] example index
    pair_b: np.ndarray  # [P]
    pair_same: np.ndarray  # [P] bool, from sense-pairs.same_sense
    pair_group: np.ndarray  # [P]
    jaccard: np.ndarray  # [P] context-word Jaccard, target excluded


def _codes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pc.dictionary_encode(array).indices.to_numpy().astype(np.int64)


def lemma_keys(table: pa.Table) -> pa.Array:
    """`lemma \\x1f pos`: the cluster key (the same lemma in another part of speech is another word)."""
    return pc.binary_join_element_wise(table.column("lemma"), table.column("pos"), "\x1f").combine_chunks()


def load_sense_corpus(senses: pa.Table, pairs: pa.Table) -> SenseCorpus:
    example_ids = senses.column("example_id").combine_chunks()
    group = _codes(lemma_keys(senses))
    synset = _codes(senses.column("synset"))
    sense_number = senses.column("sense_number").to_numpy().astype(np.int64)
    # Local sense codes ordered by WordNet sense number, so "lowest code" breaks ties towards sense 1.
    order = np.lexsort((synset, sense_number, group))
    g, s = group[order], synset[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_combo = new_group | np.r_[True, s[1:] != s[:-1]]
    combo = np.cumsum(new_combo) - 1
    first_combo = combo[np.flatnonzero(new_group)]
    local = np.empty(len(order), dtype=np.int64)
    local[order] = combo - first_combo[np.cumsum(new_group) - 1]

    a = pc.index_in(pairs.column("example_a"), value_set=example_ids)
    b = pc.index_in(pairs.column("example_b"), value_set=example_ids)
    keep = pc.and_(pc.is_valid(a), pc.is_valid(b))
    ia = pc.filter(a, keep).to_numpy().astype(np.int64)
    ib = pc.filter(b, keep).to_numpy().astype(np.int64)
    same = pc.filter(pairs.column("same_sense"), keep).to_numpy(zero_copy_only=False).astype(bool)
    return SenseCorpus(
        example_ids=example_ids,
        group=group,
        n_groups=int(group.max()) + 1 if len(group) else 0,
        synset=synset,
        local_sense=local,
        pair_a=ia,
        pair_b=ib,
        pair_same=same,
        pair_group=group[ia],
        jaccard=context_jaccard(senses, ia, ib),
    )


def context_words(senses: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Word types of each example's text with the target span removed.

    Returns:
        `(codes, size, offset, V)`: sorted unique `example * V + word` codes (V = vocabulary size), and per
        example the number of its word types and the offset of its first code.
    """
    n = senses.num_rows
    text = senses.column("text").to_numpy().astype(np.dtypes.StringDType())
    start = senses.column("target_start").to_numpy()
    end = senses.column("target_end").to_numpy()
    context = np.strings.add(
        np.strings.add(np.strings.slice(text, 0, start), " "),
        np.strings.slice(text, end, np.strings.str_len(text)),
    )
    words = pc.split_pattern_regex(pc.utf8_lower(pa.array(context)), WORD_SPLIT)
    flat = pc.list_flatten(words)
    parent = pc.list_parent_indices(words)
    nonempty = pc.greater(pc.utf8_length(flat), 0)
    flat, parent = flat.filter(nonempty), parent.filter(nonempty)
    word = pc.dictionary_encode(flat).indices.to_numpy().astype(np.int64)
    vocab = int(word.max()) + 1 if len(word) else 1
    codes = np.sort(parent.to_numpy().astype(np.int64) * vocab + word)
    codes = codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes  # word types per example
    size = np.bincount(codes // vocab, minlength=n)
    return codes, size, np.cumsum(size) - size, vocab


def context_jaccard(senses: pa.Table, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """J(a, b) = |W_a ∩ W_b| / |W_a ∪ W_b| over the context word types W of the two texts (target removed).

    Vectorised: every word of a is looked up among the sorted `example * V + word` codes as a word of b.
    """
    codes, size, offset, vocab = context_words(senses)
    if not len(ia) or not len(codes):
        return np.zeros(len(ia))
    n_a = size[ia]
    owner = np.repeat(np.arange(len(ia)), n_a)
    within = np.arange(n_a.sum()) - np.repeat(np.cumsum(n_a) - n_a, n_a)
    query = ib[owner] * vocab + codes[offset[ia][owner] + within] % vocab
    hit = codes[np.searchsorted(codes, query).clip(max=len(codes) - 1)] == query
    inter = np.bincount(owner, weights=hit, minlength=len(ia))
    union = n_a + size[ib] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


# ---- intervals ---------------------------------------------------------------------------------------


def interval(estimate, low, high) -> dict:
    """`{"estimate", "ci_low", "ci_high"}` (arrays or scalars)."""
    return {"estimate": estimate, "ci_low": low, "ci_high": high}


def _split(estimate, low, high, sizes: list[int | None]) -> list[dict]:
    """Cut bootstrap outputs into intervals: an int size is a per-layer array, None one scalar."""
    out, at = [], 0
    for size in sizes:
        if size is None:
            out.append(interval(float(estimate[at]), float(low[at]), float(high[at])))
            at += 1
        else:
            sl = slice(at, at + size)
            out.append(interval(estimate[sl], low[sl], high[sl]))
            at += size
    return out


def compare_groups(
    values: np.ndarray, in_a: np.ndarray, cluster: np.ndarray, n_clusters: int, options: BootstrapOptions
) -> dict:
    """Means of `values` `[P, L]` in groups a and b and Δ = mean_a − mean_b, per layer and layer-averaged.

    Estimates: mean_g[l] = Σ_{p∈g} v[p, l] / n_g; Δ[l] = mean_a[l] − mean_b[l]; the layer mean
    averages over l. CIs: cluster bootstrap (clusters resampled with replacement).
    """
    n_layers = values.shape[1]
    a = in_a.astype(np.float64)[:, None]
    stats_ = np.hstack([a, 1 - a, values * a, values * (1 - a)])
    sums = cluster_sums(cluster, stats_, n_clusters)
    sums = sums[(sums[:, 0] + sums[:, 1]) > 0]

    def estimator(t):
        mean_a = t[..., 2 : 2 + n_layers] / t[..., :1]
        mean_b = t[..., 2 + n_layers :] / t[..., 1:2]
        delta = mean_a - mean_b
        means = [m.mean(axis=-1, keepdims=True) for m in (mean_a, mean_b, delta)]
        return np.concatenate([mean_a, mean_b, delta, *means], axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed
    )
    ma, mb, d, ma_mean, mb_mean, d_mean = _split(est, low, high, [n_layers] * 3 + [None] * 3)
    return {
        "a": ma,
        "b": mb,
        "delta": d,
        "layer_mean": {"a": ma_mean, "b": mb_mean, "delta": d_mean},
        "n": {"a": int(in_a.sum()), "b": int((~in_a).sum())},
        "n_clusters": len(sums),
    }


# ---- 1. sense-pair overlap -----------------------------------------------------------------------------


def sense_pair_kappa(targets: Targets, corpus: SenseCorpus, top_k: int, n_experts: int) -> np.ndarray:
    """κ `[P, L]` of every sense pair at the target token (NaN rows: an example without routed target)."""
    overlap, _ = pair_overlap(targets, corpus.pair_a, targets, corpus.pair_b)
    return chance_kappa(overlap, top_k, n_experts)


def sense_pair_overlap(kappa: np.ndarray, corpus: SenseCorpus, options: BootstrapOptions) -> dict:
    """Sense-pair overlap per MoE layer l, from κ `[P, L]` (NaN rows: a pair without routed targets):

        κ̄_same[l] = mean κ[p, l] over same-sense pairs,  κ̄_diff[l] likewise,
        Δ[l] = κ̄_same[l] − κ̄_diff[l],  and the layer mean (1/L) Σ_l Δ[l],

    with cluster-bootstrap CIs over lemmas and within-lemma permutation p-values (`label_permutation_test`,
    BH-adjusted across layers).
    """
    valid = np.isfinite(kappa).all(axis=1)
    k, same = kappa[valid], corpus.pair_same[valid]
    cluster = corpus.pair_group[valid]
    result = compare_groups(k, same, cluster, corpus.n_groups, options)
    # Permutation p-values for each layer and the layer mean (last column).
    values = np.hstack([k, k.mean(axis=1, keepdims=True)])
    a, b = corpus.pair_a[valid], corpus.pair_b[valid]
    used = np.unique(np.r_[a, b])
    remap = np.full(len(corpus.group), -1)
    remap[used] = np.arange(len(used))
    p = label_permutation_test(
        values,
        remap[a],
        remap[b],
        corpus.synset[used],
        corpus.group[used],
        n_permutations=options.n_permutations,
        seed=options.seed + 1,
    )
    return {
        "n_pairs": {"same": result["n"]["a"], "different": result["n"]["b"]},
        "n_lemmas": result["n_clusters"],
        "kappa_same": result["a"],
        "kappa_different": result["b"],
        "delta": {**result["delta"], "p_value": p[:-1], "p_value_bh": bh_adjust(p[:-1])},
        "layer_mean": {
            "kappa_same": result["layer_mean"]["a"],
            "kappa_different": result["layer_mean"]["b"],
            "delta": {**result["layer_mean"]["delta"], "p_value": float(p[-1])},
        },
        "jaccard": {
            "same": float(corpus.jaccard[valid][same].mean()) if same.any() else None,
            "different": float(corpus.jaccard[valid][~same].mean()) if (~same).any() else None,
        },
    }


def jaccard_strata(jaccard: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stratum code per pair: each distinct J when there are few, else decile bins (then J is also a term)."""
    values, inverse = np.unique(jaccard, return_inverse=True)
    if len(values) <= MAX_EXACT_STRATA:
        return inverse, False
    edges = np.unique(np.quantile(jaccard, np.linspace(0, 1, 11)[1:-1]))
    return np.searchsorted(edges, jaccard, side="right"), True


def context_adjusted(kappa: np.ndarray, corpus: SenseCorpus, options: BootstrapOptions) -> dict:
    """Same-minus-different κ adjusted for the context-word overlap of the two sentences.

    Per layer l, least squares over pairs p:
        κ_p,l = β0 + β_same,l · same_p + Σ_s γ_s,l · [stratum(J_p) = s] (+ β_J,l · J_p)   + ε
    where J_p is the context-word Jaccard of the two texts (target removed) and the strata are its distinct
    values (≤ 10 of them) or its deciles (then the linear J term is added within them). β_same compares
    same- and different-sense pairs of equal context overlap. CI: cluster bootstrap of the normal equations.
    """
    valid = np.isfinite(kappa).all(axis=1)
    y, same, jac = kappa[valid], corpus.pair_same[valid], corpus.jaccard[valid]
    cluster = corpus.pair_group[valid]
    strata, linear = jaccard_strata(jac)
    n_strata = int(strata.max()) + 1 if len(strata) else 1
    columns = [np.ones(len(y)), same.astype(np.float64)]
    if linear:
        columns.append(jac)
    columns += [(strata == s).astype(np.float64) for s in range(1, n_strata)]
    x = np.column_stack(columns)
    d, n_layers = x.shape[1], y.shape[1]
    index = ClusterIndex(cluster, corpus.n_groups)
    x, y = index.sort(x), index.sort(y)  # once, so each sum below is a plain reduceat
    xtx = index.sums((x[:, :, None] * x[:, None, :]).reshape(len(x), d * d), presorted=True)
    xty = np.hstack([index.sums(x[:, i : i + 1] * y, presorted=True) for i in range(d)])
    sums = np.hstack([xtx, xty])
    sums = sums[sums[:, 0] > 0]

    def estimator(t):
        gram = t[..., : d * d].reshape(*t.shape[:-1], d, d)
        rhs = t[..., d * d :].reshape(*t.shape[:-1], d, n_layers)
        beta = np.linalg.pinv(gram) @ rhs
        return np.concatenate([beta[..., 1, :], beta[..., 1, :].mean(axis=-1, keepdims=True)], axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed + 2
    )
    per_layer, mean = _split(est, low, high, [n_layers, None])
    return {
        "method": (
            "least squares of kappa on same_sense + context-Jaccard strata"
            + (" (deciles) + linear Jaccard" if linear else " (distinct values)")
        ),
        "n_strata": n_strata,
        "delta": per_layer,
        "layer_mean": {"delta": mean},
    }


def over_null(
    kappa: np.ndarray, null_kappa: np.ndarray, corpus: SenseCorpus, options: BootstrapOptions
) -> dict:
    """Effect over a null model: D = Δκ(model) − Δκ(null), on the pairs both models routed.

    Layer mean: D = (1/L_m) Σ_l Δ_m[l] − (1/L_n) Σ_l Δ_n[l] (κ is chance-corrected, so models with other
    N, k or layer counts compare); per layer D[l] = Δ_m[l] − Δ_n[l] when the layer counts match. CIs: one
    cluster bootstrap resampling the same lemmas for both models.
    """
    valid = np.isfinite(kappa).all(axis=1) & np.isfinite(null_kappa).all(axis=1)
    km, kn = kappa[valid], null_kappa[valid]
    a = corpus.pair_same[valid].astype(np.float64)[:, None]
    lm, ln = km.shape[1], kn.shape[1]
    stats_ = np.hstack([a, 1 - a, km * a, km * (1 - a), kn * a, kn * (1 - a)])
    sums = cluster_sums(corpus.pair_group[valid], stats_, corpus.n_groups)
    sums = sums[(sums[:, 0] + sums[:, 1]) > 0]
    per_layer = lm == ln

    def estimator(t):
        n_same, n_diff = t[..., :1], t[..., 1:2]
        at = 2
        dm = t[..., at : at + lm] / n_same - t[..., at + lm : at + 2 * lm] / n_diff
        at += 2 * lm
        dn = t[..., at : at + ln] / n_same - t[..., at + ln : at + 2 * ln] / n_diff
        out = [dm.mean(axis=-1, keepdims=True) - dn.mean(axis=-1, keepdims=True)]
        if per_layer:
            out.append(dm - dn)
        return np.concatenate(out, axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed + 3
    )
    parts = _split(est, low, high, [None, lm] if per_layer else [None])
    return {
        "n_pairs": int(valid.sum()),
        "layer_mean": {"delta": parts[0]},
        "delta": parts[1] if per_layer else None,
    }


# ---- 2. substitutions ------------------------------------------------------------------------------------


def substitution_overlap(
    base: Targets,
    substituted: Targets,
    corpus: SenseCorpus,
    substitutions: pa.Table,
    top_k: int,
    n_experts: int,
    options: BootstrapOptions,
    contrast: tuple[str, str] = ("synonym", "other-sense"),
) -> dict | None:
    """κ between the base example's target and the substituted target, per relation and layer.

    `substituted` follows the row order of `substitutions`; Δ = mean κ(contrast[0]) − mean κ(contrast[1])
    (WordNet's synonym − other-sense; SWORDS' acceptable − rejected).
    """
    base_index = pc.index_in(substitutions.column("example_id"), value_set=corpus.example_ids)
    base_index = pc.fill_null(base_index, -1).to_numpy().astype(np.int64)
    relation = substitutions.column("relation").to_numpy(zero_copy_only=False).astype(str)
    cluster = _codes(lemma_keys(substitutions))
    known = base_index >= 0
    overlap, valid = pair_overlap(
        base, np.where(known, base_index, 0), substituted, np.arange(substitutions.num_rows)
    )
    valid &= known
    kappa = chance_kappa(overlap, top_k, n_experts)
    out: dict = {"n": {}, "kappa": {}, "delta": None, "layer_mean": {}}
    for name in sorted(set(relation[valid])):
        rows = valid & (relation == name)
        res = compare_groups(
            kappa[rows], np.ones(rows.sum(), bool), cluster[rows], int(cluster.max()) + 1, options
        )
        out["n"][name] = int(rows.sum())
        out["kappa"][name] = res["a"]
        out["layer_mean"][name] = res["layer_mean"]["a"]
    both = valid & np.isin(relation, list(contrast))
    syn = relation[both] == contrast[0]
    if syn.any() and (~syn).any():
        res = compare_groups(kappa[both], syn, cluster[both], int(cluster.max()) + 1, options)
        out["delta"] = res["delta"]
        out["layer_mean"]["delta"] = res["layer_mean"]["delta"]
    return out if out["n"] else None


# ---- 7. routing-only sense probe --------------------------------------------------------------------------


def sense_probe(targets: Targets, corpus: SenseCorpus, options: BootstrapOptions) -> dict:
    """Leave-one-out nearest-neighbour sense classification from routing alone, against the MFS baseline.

    Among the other examples of the same lemma, the prediction for example x is the sense of its nearest
    neighbour by sim(x, y) = Σ_l |E_x,l ∩ E_y,l| (shared experts summed over MoE layers; averaged over
    sub-token pairs for `--target all`). Ties: the sense most frequent among the tied neighbours, then the
    lowest WordNet sense number. Baseline (MFS, leave-one-out): the sense most frequent among the lemma's
    other examples, ties to the lowest sense number. Evaluated on lemmas with ≥ 2 senses among their
    routed examples. CI of accuracy(probe) − accuracy(MFS): cluster bootstrap over lemmas.
    """
    present = np.flatnonzero(targets.present)
    group, local = corpus.group[present], corpus.local_sense[present]
    # Lemmas with at least two senses among their routed examples.
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
    # All unordered pairs i < j within a lemma.
    partners = end - np.arange(n) - 1
    ia = np.repeat(np.arange(n), partners)
    ib = ia + 1 + (np.arange(partners.sum()) - np.repeat(np.cumsum(partners) - partners, partners))
    overlap, _ = pair_overlap(targets, present[ia], targets, present[ib])
    sim = overlap.sum(axis=1)
    query, cand, score = np.r_[ia, ib], np.r_[ib, ia], np.r_[sim, sim]
    order = np.lexsort((-score, query))
    query, cand, score = query[order], cand[order], score[order]
    first = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    best = np.repeat(score[first], np.diff(np.r_[first, len(query)]))
    tied = score >= best - 1e-9
    votes = np.bincount(query[tied] * n_local + local[cand[tied]], minlength=n * n_local).reshape(n, n_local)
    probe = votes.argmax(axis=1)
    group_counts = np.bincount(group * n_local + local, minlength=corpus.n_groups * n_local)
    others = group_counts.reshape(corpus.n_groups, n_local)[group].copy()
    others[np.arange(n), local] -= 1
    mfs = others.argmax(axis=1)
    correct = np.column_stack([np.ones(n), probe == local, mfs == local]).astype(np.float64)
    sums = cluster_sums(group, correct, corpus.n_groups)
    sums = sums[sums[:, 0] > 0]

    def estimator(t):
        acc = t[..., 1:3] / t[..., :1]
        return np.concatenate([acc, acc[..., :1] - acc[..., 1:2]], axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed + 4
    )
    acc, mfs_acc, diff = _split(est, low, high, [None, None, None])
    return {
        "n_examples": n,
        "n_lemmas": len(sums),
        "accuracy": acc,
        "mfs_accuracy": mfs_acc,
        "difference": diff,
    }
