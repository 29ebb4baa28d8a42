"""A calibration that can fail: the controls on planted truth, in memory, over the atlas's own sense pairs.

Every replicate keeps the atlas's pairs, lemmas, Jaccard and each target's token identity, and replaces the
targets' routing of one model by a planted mechanism on top of pure noise (a uniformly random top-k set per
target and layer), so the truth is known exactly:

    plant × control matrix   one sense-blind confound (below) at every layer with probability q_c, alone
                             and with a real sense effect (each synset's canonical set with probability
                             q_s) at every other layer. Alone, the raw layer-mean CI must lie above 0 (the
                             confound is strong enough to test), and a control under-corrects where its CI
                             lies above 0 (per layer and for the layer mean); with the sense effect, it
                             keeps it when its CI > 0 at every sense layer and over-corrects where its CI
                             lies below the truth (the raw Δκ of the same draws without the confound). A
                             confound passes when its control and `all` remove it and keep the effect.
    false-positive rate      pure noise over `seeds` replicates: per layer and control, the share whose
                             CI excludes 0, against the nominal 1 − confidence (one-sided binomial p).
    power                    a sense effect at every layer, at increasing q_s: per layer and control, the
                             smallest q_s (and its raw Δκ) from which the CI excludes 0 at every larger q_s.

Confounds (what routing follows; `CONFOUNDS`): the token_identity key (target ids with both neighbours),
the neighbours key (both neighbour ids), the exact position (the control sees only buckets), the token two
positions before the target, the target id's frequency bucket, and the context words (MinHash: two
targets share a set with probability J). The last three are not any control's stratification key.

A random-init twin (the null model) is planted with the same confound (its own sets and draws) and no
sense effect: a random-init model has token- and context-driven routing too.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from atlas_build.metrics.controls.regression import CONTROL_NAMES, NullModel, pair_controls
from atlas_build.metrics.estimators.identity import TargetIdentity
from atlas_build.metrics.estimators.overlap import chance_kappa
from atlas_build.metrics.estimators.senses import (
    BootstrapOptions,
    ContextWords,
    SenseCorpus,
    compare_groups,
    context_jaccard,
)

# Confound -> (the control meant to remove it, what routing follows, the text features a sense-specific
# phrasing copies from the synset's donor example).
CONFOUNDS = {
    "token_identity": (
        "token_identity",
        "the target's token-id sequence with both neighbour ids (the control's key)",
        ("ids", "left", "right"),
    ),
    "neighbours": (
        "neighbours",
        "the left and right neighbour ids together (the control's key)",
        ("left", "right"),
    ),
    "position": ("position", "the target's exact position (the control sees buckets)", ("position",)),
    "neighbour_2": (
        "neighbours",
        "the token two positions before the target (not a control's key; the phrasing copies both left tokens)",
        ("left2", "left"),
    ),
    "frequency": (
        "token_identity",
        "the log2 frequency bucket of the target token id (not a control's key; the phrasing copies the ids)",
        ("ids",),
    ),
    "context_words": (
        "context_words",
        "MinHash of the context words, P(same set) = J (the control sees J strata; the phrasing copies words)",
        ("words",),
    ),
}
NAMES = ("raw", *CONTROL_NAMES)


@dataclass
class CalibrationOptions:
    seeds: int = 10  # noise replicates of the false-positive rates
    n_resamples: int = 200  # bootstrap resamples of every fit
    confidence: float = 0.95
    # q_c: probability that a target follows the confound at a layer (1: routing is a function of it, as in a
    # random-init model, whose routing is its tokens' and contexts')
    confound_strength: float = 1.0
    # ρ: probability that an example's text features (those the confound follows) are its synset's donor
    # example's: a sense-specific phrasing, so that a sense-blind confound shows as a raw effect.
    phrasing: float = 0.3
    sense_strength: float = 0.5  # q_s of the matrix's sense effect
    power_strengths: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    seed: int = 0

    def public(self) -> dict:
        return {
            "seeds": self.seeds,
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
            "confound_strength": self.confound_strength,
            "phrasing": self.phrasing,
            "sense_strength": self.sense_strength,
            "power_strengths": list(self.power_strengths),
            "seed": self.seed,
        }


# Random keys drawn at once by `random_sets` (a chunk of rows x N experts): bounded memory at R1's size.
_KEYS_PER_CHUNK = 1 << 22


def random_sets(n_sets: int, n_experts: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """`[n_sets, k]` uniformly random k-subsets of N experts (the k smallest of N random keys)."""
    out = np.empty((n_sets, top_k), dtype=np.int64)
    rows = max(1, _KEYS_PER_CHUNK // max(n_experts, 1))
    for lo in range(0, n_sets, rows):
        keys = rng.random((min(rows, n_sets - lo), n_experts))
        part = np.argpartition(keys, top_k - 1, axis=1) if top_k < n_experts else np.argsort(keys, axis=1)
        out[lo : lo + len(keys)] = part[:, :top_k]
    return out


def _dense(*columns: np.ndarray) -> np.ndarray:
    return np.unique(np.column_stack(columns), axis=0, return_inverse=True)[1].reshape(-1)


def minhash_codes(corpus: SenseCorpus, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """`[E, L]` the context word of lowest random rank per example and layer (a new rank per layer), so two
    examples share it with probability equal to their context-word Jaccard; no context word: its own code."""
    words = corpus.words
    n = len(corpus.group)
    owner, word = words.codes // words.vocab, words.codes % words.vocab
    out = np.empty((n, n_layers), dtype=np.int64)
    for layer in range(n_layers):
        rank = rng.permutation(words.vocab)
        best = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(best, owner, rank[word])
        out[:, layer] = np.where(best < words.vocab, best, words.vocab + np.arange(n))
    return out


@dataclass
class Planter:
    """One model's targets in the atlas's sense corpus, and the planted κ of a replicate."""

    corpus: SenseCorpus
    identity: TargetIdentity
    token_counts: dict[int, int]  # token id -> occurrences in the model's routing rows
    n_experts: int
    top_k: int
    n_layers: int
    seed: int = 0
    _codes: dict = field(default_factory=dict)

    def rng(self, *key) -> np.random.Generator:
        # Strings by crc32: Python's str hash changes from process to process.
        return np.random.default_rng(
            [self.seed, *(zlib.crc32(k.encode()) if isinstance(k, str) else k for k in key)]
        )

    def phrased(self, confound: str, rho: float) -> Planter:
        """A copy whose examples take, with probability ρ each, the text features `confound` follows from a
        donor example of their synset (a seeded routed example): the identity and context words every
        control then sees. ρ = 0: the atlas's own features."""
        fields = CONFOUNDS[confound][2]
        if rho <= 0:
            return self
        rng = self.rng("phrasing", confound)
        ident, corpus = self.identity, self.corpus
        n = len(corpus.group)
        routed = np.flatnonzero(ident.n_ids > 0)
        order = routed[np.argsort(rng.random(len(routed)))]
        donor_of = np.full(int(corpus.synset.max()) + 1 if n else 0, -1, dtype=np.int64)
        donor_of[corpus.synset[order]] = order  # the last write of a random order: a random donor
        donor = donor_of[corpus.synset]
        copy = (rng.random(n) < rho) & (ident.n_ids > 0) & (donor >= 0)
        src = np.where(copy, donor, np.arange(n))
        changes: dict = {}
        for name in fields:
            if name == "ids":
                changes.update(ids=ident.ids[src], n_ids=ident.n_ids[src])
            elif name != "words":
                changes[name] = getattr(ident, name)[src]
        new_corpus = corpus
        if "words" in fields:
            words = corpus.words
            size = words.size[src]
            offset = np.r_[0, np.cumsum(size)[:-1]].astype(np.int64)
            at = np.repeat(words.offset[src] - offset, size) + np.arange(int(size.sum()))
            word = words.codes[at] % words.vocab
            codes = np.repeat(np.arange(n), size) * words.vocab + word
            new_words = ContextWords(codes=codes, size=size, offset=offset, vocab=words.vocab)
            jaccard = context_jaccard(new_words, corpus.pair_a, corpus.pair_b)
            new_corpus = replace(corpus, words=new_words, jaccard=jaccard)
        return replace(self, identity=replace(ident, **changes), corpus=new_corpus, _codes={})

    def codes(self, confound: str) -> np.ndarray:
        """`[E, L]` the feature the confound routes by (equal code: the same planted set at that layer)."""
        if confound not in self._codes:
            ident, n_layers = self.identity, self.n_layers
            if confound == "token_identity":
                code = _dense(ident.ids, ident.left, ident.right)
            elif confound == "neighbours":
                code = _dense(ident.left, ident.right)
            elif confound == "position":
                code = _dense(ident.position)
            elif confound == "neighbour_2":
                code = _dense(ident.left2)
            elif confound == "frequency":
                last = ident.ids[np.arange(len(ident.n_ids)), np.maximum(ident.n_ids - 1, 0)]
                counts = np.array([self.token_counts.get(int(t), 0) for t in last], dtype=np.float64)
                code = np.floor(np.log2(np.maximum(counts, 1))).astype(np.int64)
            elif confound == "context_words":
                self._codes[confound] = minhash_codes(self.corpus, n_layers, self.rng("minhash"))
                return self._codes[confound]
            else:
                raise ValueError(f"unknown confound {confound!r}; confounds: {', '.join(CONFOUNDS)}")
            self._codes[confound] = np.repeat(code[:, None], n_layers, axis=1)
        return self._codes[confound]

    def sets_of(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`[E, L, k]` a seeded random set per (code, layer)."""
        out = np.empty((*codes.shape, self.top_k), dtype=np.int64)
        for layer in range(codes.shape[1]):
            table = random_sets(int(codes[:, layer].max()) + 1, self.n_experts, self.top_k, rng)
            out[:, layer] = table[codes[:, layer]]
        return out

    def sets(
        self,
        replicate: int,
        confound: str | None,
        sense_layers: np.ndarray | None,
        sense_strength: float,
        confound_strength: float,
        twin: bool = False,
    ) -> np.ndarray:
        """`[E, L, k]` planted sets: noise, then the confound (prob q_c), then the sense effect (prob q_s at
        `sense_layers`). Noise and sense draws depend on the replicate only, so that a replicate with and
        without the confound differ in the confound alone."""
        tag = "twin" if twin else "model"
        n, n_layers = len(self.corpus.group), self.n_layers
        base = random_sets(n * n_layers, self.n_experts, self.top_k, self.rng(tag, "noise", replicate))
        sets = base.reshape(n, n_layers, self.top_k)
        if confound is not None:
            rng = self.rng(tag, "confound", confound, replicate)
            planted = self.sets_of(self.codes(confound), rng)
            mask = rng.random((n, n_layers)) < confound_strength
            sets = np.where(mask[..., None], planted, sets)
        if sense_layers is not None and sense_layers.any() and not twin:
            rng = self.rng("sense", replicate)
            synset = np.repeat(self.corpus.synset[:, None], n_layers, axis=1)
            planted = self.sets_of(synset, rng)
            mask = (rng.random((n, n_layers)) < sense_strength) & sense_layers[None, :]
            sets = np.where(mask[..., None], planted, sets)
        return sets

    def kappa(self, sets: np.ndarray) -> np.ndarray:
        """κ `[P, L]` of the sense pairs (NaN where a target is not routed, as in the atlas)."""
        pa_, pb = self.corpus.pair_a, self.corpus.pair_b
        overlap = np.empty((len(pa_), self.n_layers), dtype=np.float64)
        step = max(1, _KEYS_PER_CHUNK // max(self.n_layers * self.top_k * self.top_k, 1))
        for lo in range(0, len(pa_), step):
            a, b = sets[pa_[lo : lo + step]], sets[pb[lo : lo + step]]
            overlap[lo : lo + step] = (a[..., :, None] == b[..., None, :]).sum(axis=(-1, -2))
        kappa = chance_kappa(overlap, self.top_k, self.n_experts)
        routed = self.identity.n_ids > 0
        kappa[~(routed[self.corpus.pair_a] & routed[self.corpus.pair_b])] = np.nan
        return kappa


def fit(planter: Planter, kappa: np.ndarray, null_kappa: np.ndarray | None, boot: BootstrapOptions) -> dict:
    """Raw Δκ and every control on planted κ: `{name: {"estimate", "ci_low", "ci_high"} per layer + "mean"}`."""
    corpus = planter.corpus
    valid = np.isfinite(kappa).all(axis=1)
    raw = compare_groups(
        kappa[valid], corpus.pair_same[valid], corpus.pair_group[valid], corpus.n_groups, boot
    )
    out = {"raw": {**raw["delta"], "mean": raw["layer_mean"]["delta"]}}
    null = NullModel("planted twin", null_kappa, planter.identity) if null_kappa is not None else None
    for name, result in pair_controls(kappa, corpus, planter.identity, boot, null).items():
        if result.get("delta") is not None:
            out[name] = {**result["delta"], "mean": result["layer_mean"]["delta"]}
    return {
        name: {k: np.asarray(v, dtype=np.float64) if k != "mean" else v for k, v in block.items()}
        for name, block in out.items()
    }


def _layers(mask: np.ndarray, moe_layers: list[int]) -> list[int]:
    return [int(moe_layers[i]) for i in np.flatnonzero(mask)]


def _excludes_above(iv: dict, value: float = 0.0) -> bool:
    return iv.get("ci_low") is not None and iv["ci_low"] > value


def matrix_cell(
    alone: dict, with_sense: dict, truth: np.ndarray, sense_layers: np.ndarray, moe_layers
) -> dict:
    """One control on one confound. `alone`: its fit on the confound only (truth 0 everywhere): it removes
    the confound when its layer-mean CI does not lie above 0, and under-corrects at the layers where its CI
    does (listed: at 95% a layer does so by chance with probability 2.5%). `with_sense`: its fit with the
    sense effect too: it keeps the effect when its CI > 0 at every sense layer, and over-corrects where its
    CI lies below the truth there."""
    under = alone["ci_low"] > 0
    over = (with_sense["ci_high"] < truth) & sense_layers
    return {
        "removes": not _excludes_above(alone["mean"]),
        "keeps": bool((with_sense["ci_low"][sense_layers] > 0).all()),
        "under_corrects_at": _layers(under, moe_layers),
        "under_corrects_layer_mean": _excludes_above(alone["mean"]),
        "over_corrects_at": _layers(over, moe_layers),
        "left_of_confound": alone["mean"],  # layer-mean Δκ left of the confound alone (truth 0)
        "sense_residual": float(np.mean((with_sense["estimate"] - truth)[sense_layers])),
    }


def plant_matrix(planter: Planter, options: CalibrationOptions, moe_layers: list[int]) -> dict:
    """Plant × control: every confound alone, and with a sense effect at every other layer (module text)."""
    boot = BootstrapOptions(options.n_resamples, 0, options.confidence, options.seed)
    sense_layers = np.zeros(planter.n_layers, dtype=bool)
    sense_layers[1::2] = True
    if not sense_layers.any():
        sense_layers[0] = True
    q_s, q_c = options.sense_strength, options.confound_strength

    def run(plants: Planter, confound, sense):
        layers = sense_layers if sense else None
        kappa = plants.kappa(plants.sets(0, confound, layers, q_s, q_c))
        null = plants.kappa(plants.sets(0, confound, None, q_s, q_c, twin=True))
        return fit(plants, kappa, null, boot)

    sense_only = run(planter, None, True)
    truth = np.where(sense_layers, sense_only["raw"]["estimate"], 0.0)
    out: dict = {
        "sense_layers": _layers(sense_layers, moe_layers),
        "sense_strength": q_s,
        "confound_strength": q_c,
        "phrasing": options.phrasing,
        "truth": truth,
        "sense_only": {
            n: {"keeps": bool((b["ci_low"][sense_layers] > 0).all()), "layer_mean": b["mean"]}
            for n, b in sense_only.items()
        },
        "confounds": {},
    }
    for confound, (remover, text, _) in CONFOUNDS.items():
        phrased = planter.phrased(confound, options.phrasing)
        alone, with_sense = run(phrased, confound, False), run(phrased, confound, True)
        cells = {
            n: matrix_cell(alone[n], with_sense[n], truth, sense_layers, moe_layers)
            for n in alone
            if n in with_sense
        }
        raw = alone["raw"]["mean"]
        strong = _excludes_above(raw)
        half = (raw["ci_high"] - raw["ci_low"]) / 2 if strong else None
        own = [cells.get(remover), cells.get("all")]
        out["confounds"][confound] = {
            "follows": text,
            "removed_by": remover,
            "raw_layer_mean": raw,
            "raw_ci_above_0": strong,
            # The confound's raw layer-mean Δκ in CI half-widths (its strength against the atlas's noise).
            "raw_strength_in_half_widths": raw["estimate"] / half if half else None,
            "cells": cells,
            "passed": bool(strong and all(c is not None and c["removes"] and c["keeps"] for c in own)),
        }
    return out


def false_positive_rates(planter: Planter, options: CalibrationOptions, moe_layers: list[int]) -> dict:
    """Pure noise over `options.seeds` replicates: per control and layer, the share of CIs excluding 0."""
    from scipy import stats

    boot = BootstrapOptions(options.n_resamples, 0, options.confidence, options.seed)
    hits: dict[str, np.ndarray] = {}
    mean_hits: dict[str, int] = {}
    for r in range(options.seeds):
        kappa = planter.kappa(planter.sets(1000 + r, None, None, 0.0, 0.0))
        null = planter.kappa(planter.sets(1000 + r, None, None, 0.0, 0.0, twin=True))
        for name, block in fit(planter, kappa, null, boot).items():
            excludes = (block["ci_low"] > 0) | (block["ci_high"] < 0)
            hits[name] = hits.get(name, 0) + excludes.astype(np.int64)
            mean = block["mean"]
            mean_hits[name] = mean_hits.get(name, 0) + int(mean["ci_low"] > 0 or mean["ci_high"] < 0)
    nominal = 1 - options.confidence
    out: dict = {
        "nominal": nominal,
        "n_replicates": options.seeds,
        "layers": list(moe_layers),
        "controls": {},
    }
    for name, count in hits.items():
        p = [
            float(stats.binomtest(int(c), options.seeds, nominal, alternative="greater").pvalue)
            for c in count
        ]
        out["controls"][name] = {
            "per_layer": count / options.seeds,
            "layer_mean": mean_hits[name] / options.seeds,
            "p_above_nominal": p,
            "above_nominal_at": [int(moe_layers[i]) for i, v in enumerate(p) if v < 0.01],
        }
    return out


def power(planter: Planter, options: CalibrationOptions, moe_layers: list[int]) -> dict:
    """The smallest planted sense effect each control detects per layer, at the atlas's size."""
    boot = BootstrapOptions(options.n_resamples, 0, options.confidence, options.seed)
    strengths = sorted(options.power_strengths)
    every = np.ones(planter.n_layers, dtype=bool)
    detected: dict[str, list[np.ndarray]] = {}
    effect = []
    for j, q in enumerate(strengths):
        kappa = planter.kappa(planter.sets(2000 + j, None, every, q, 0.0))
        null = planter.kappa(planter.sets(2000 + j, None, None, q, 0.0, twin=True))
        fitted = fit(planter, kappa, null, boot)
        effect.append(fitted["raw"]["estimate"])
        for name, block in fitted.items():
            detected.setdefault(name, []).append(block["ci_low"] > 0)
    effect = np.array(effect)  # [S, L] the raw Δκ each strength plants
    out: dict = {"strengths": strengths, "delta_kappa": effect, "layers": list(moe_layers), "controls": {}}
    for name, rows in detected.items():
        hit = np.array(rows)  # [S, L]
        # From the smallest strength on which it detects at that and every larger strength.
        tail = np.flip(np.logical_and.accumulate(np.flip(hit, axis=0), axis=0), axis=0)
        first = [int(np.argmax(tail[:, i])) if tail[:, i].any() else None for i in range(hit.shape[1])]
        out["controls"][name] = {
            "min_strength": [strengths[f] if f is not None else None for f in first],
            "min_delta_kappa": [float(effect[f, i]) if f is not None else None for i, f in enumerate(first)],
        }
    return out


def calibration_summary(
    planter: Planter, options: CalibrationOptions, moe_layers: list[int], *, model: str, manifest_sha256: str
) -> dict:
    """The `calibration` block of metrics.json: the matrix, false-positive rates and power, tied to the data
    (the atlas's manifest sha256, the model and its pair counts)."""
    matrix = plant_matrix(planter, options, moe_layers)
    fpr = false_positive_rates(planter, options, moe_layers)
    valid = np.isfinite(planter.kappa(planter.sets(0, None, None, 0.0, 0.0))).all(axis=1)
    return {
        "method": "in-memory plants on the atlas's own sense pairs and token identity (metrics/calibration/"
        "matrix.py); PLANTED routing on noise, not a model's",
        "manifest_sha256": manifest_sha256,
        "model": model,
        "n_pairs": int(valid.sum()),
        "n_lemmas": int(len(np.unique(planter.corpus.pair_group[valid]))),
        "options": options.public(),
        "matrix": matrix,
        "false_positive_rate": fpr,
        "power": power(planter, options, moe_layers),
        "passed": {
            "matrix": all(c["passed"] for c in matrix["confounds"].values()),
            "false_positive_rate": not any(c["above_nominal_at"] for c in fpr["controls"].values()),
        },
    }
