"""Sense metrics at the target token: sense-pair overlap with its controls, substitutions, routing-only probe.

All pair quantities are per MoE layer; clusters for every interval are lemmas (lemma + part of speech).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.metrics.estimators.overlap import Targets, chance_kappa, pair_overlap
from atlas_build.metrics.estimators.stats import (
    bh_adjust,
    cluster_bootstrap,
    cluster_sums,
    label_permutation_test,
    monte_carlo_interval,
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
class ContextWords:
    """Word types of each example's text with the target span removed, as sorted `example * V + word` codes."""

    codes: np.ndarray  # [sum of sizes] int64, sorted
    size: np.ndarray  # [E] number of word types of each example
    offset: np.ndarray  # [E] position of each example's first code
    vocab: int  # V


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
    form: np.ndarray  # [E] code of the target's surface form (the exact text of the target span)
    words: ContextWords  # every example's context word types (target removed)

    def context_jaccard(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """Context-word Jaccard `[n]` of example pairs `(ia[i], ib[i])` (see `context_jaccard`)."""
        return context_jaccard(self.words, ia, ib)


def _codes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pc.dictionary_encode(array).indices.to_numpy().astype(np.int64)


def lemma_keys(table: pa.Table) -> pa.Array:
    """`lemma \\x1f pos`: the cluster key (the same lemma in another part of speech is another word)."""
    return pc.binary_join_element_wise(table.column("lemma"), table.column("pos"), "\x1f").combine_chunks()


def target_forms(senses: pa.Table) -> np.ndarray:
    """Code `[E]` of each example's target surface form: the exact (case-sensitive) text of its span."""
    text = senses.column("text").to_numpy().astype(np.dtypes.StringDType())
    start = senses.column("target_start").to_numpy()
    end = senses.column("target_end").to_numpy()
    return _codes(pa.array(np.strings.slice(text, start, end)))


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
    words = context_words(senses)
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
        jaccard=context_jaccard(words, ia, ib),
        form=target_forms(senses),
        words=words,
    )


def context_words(senses: pa.Table) -> ContextWords:
    """Word types of each example's text with the target span removed (`ContextWords`)."""
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
    return ContextWords(codes, size, np.cumsum(size) - size, vocab)


def context_jaccard(words: ContextWords, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """J(a, b) = |W_a ∩ W_b| / |W_a ∪ W_b| over the context word types W of the two texts (target removed).

    Vectorised: every word of a is looked up among the sorted `example * V + word` codes as a word of b.
    """
    codes, size, offset, vocab = words.codes, words.size, words.offset, words.vocab
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
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
    BH-adjusted across layers) with their exact-binomial Monte Carlo intervals.
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
        "delta": {
            **result["delta"],
            "p_value": p[:-1],
            "p_value_bh": bh_adjust(p[:-1]),
            "p_value_interval": [monte_carlo_interval(v, options.n_permutations) for v in p[:-1]],
        },
        "layer_mean": {
            "kappa_same": result["layer_mean"]["a"],
            "kappa_different": result["layer_mean"]["b"],
            "delta": {
                **result["layer_mean"]["delta"],
                "p_value": float(p[-1]),
                "p_value_interval": monte_carlo_interval(p[-1], options.n_permutations),
            },
        },
        "jaccard": {
            "same": float(corpus.jaccard[valid][same].mean()) if same.any() else None,
            "different": float(corpus.jaccard[valid][~same].mean()) if (~same).any() else None,
        },
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
