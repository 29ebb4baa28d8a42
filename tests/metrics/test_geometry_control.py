"""`controls.hidden_state` on planted data: routing overlap made a function of router-input similarity must be
explained by it; a sense effect independent of the vectors must survive it. The point estimate is
recomputed here by plain least squares (float64, numpy)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from atlas_build.metrics.controls.geometry import fold_hidden_state, hidden_state_control, pair_geometry
from atlas_build.metrics.estimators.senses import BootstrapOptions, SenseCorpus

OPTIONS = BootstrapOptions(n_resamples=400, seed=1)


def planted(seed: int, n_lemmas: int = 80, per_sense: int = 3, dim: int = 16, n_layers: int = 2, spread=0.8):
    """Lemmas with two senses; each example's router input = its sense's centre + noise (`spread`)."""
    rng = np.random.default_rng(seed)
    group, synset, vectors = [], [], []
    for g in range(n_lemmas):
        centres = rng.standard_normal((2, n_layers, dim))
        for s in range(2):
            for _ in range(per_sense):
                group.append(g)
                synset.append(2 * g + s)
                vectors.append(centres[s] + spread * rng.standard_normal((n_layers, dim)))
    group, synset = np.array(group), np.array(synset)
    pair_a, pair_b = [], []
    for g in range(n_lemmas):
        members = np.flatnonzero(group == g)
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                pair_a.append(members[i])
                pair_b.append(members[j])
    pair_a, pair_b = np.array(pair_a), np.array(pair_b)
    corpus = SenseCorpus(
        example_ids=pa.array([f"e{i}" for i in range(len(group))]),
        group=group,
        n_groups=n_lemmas,
        synset=synset,
        local_sense=synset % 2,
        pair_a=pair_a,
        pair_b=pair_b,
        pair_same=synset[pair_a] == synset[pair_b],
        pair_group=group[pair_a],
        jaccard=rng.uniform(0, 0.5, len(pair_a)),
        form=np.zeros(len(group), dtype=np.int64),
        words=None,
    )
    geometry = pair_geometry(np.array(vectors), corpus, [1, 2][:n_layers], [1, 2][:n_layers])
    return corpus, geometry, rng


def least_squares_same(kappa: np.ndarray, same: np.ndarray, cos: np.ndarray) -> float:
    """β_same of κ on [1, same, cos, decile-bin dummies of cos (most frequent bin left out)]."""
    edges = np.unique(np.quantile(cos, np.linspace(0, 1, 11)[1:-1]))
    bins = np.searchsorted(edges, cos, side="right")
    levels, counts = np.unique(bins, return_counts=True)
    dummies = [bins == level for level in levels if level != levels[np.argmax(counts)]]
    x = np.column_stack([np.ones(len(kappa)), same, cos, *dummies]).astype(np.float64)
    return float(np.linalg.lstsq(x, kappa, rcond=None)[0][1])


def test_routing_made_of_geometry_is_explained_by_it():
    corpus, geometry, rng = planted(0)
    cos = geometry.cosine
    kappa = 0.2 + 0.6 * cos + 0.02 * rng.standard_normal(cos.shape)
    hidden, combined = hidden_state_control(kappa, corpus, geometry, OPTIONS)
    raw = hidden["raw"]["layer_mean"]["delta"]
    assert raw["ci_low"] > 0.1  # same-sense targets are closer, so the raw effect is large
    geo = hidden["layer_mean"]["delta"]
    assert geo["ci_low"] <= 0 <= geo["ci_high"]
    assert abs(geo["estimate"]) < 0.05 * raw["estimate"]
    assert hidden["explained"]["ci_low"] <= 1 <= hidden["explained"]["ci_high"]
    assert hidden["explained"]["estimate"] > 0.95
    for j in range(2):
        expected = least_squares_same(kappa[:, j], corpus.pair_same, cos[:, j])
        assert hidden["delta_at_layers"]["estimate"][j] == pytest.approx(expected, abs=1e-9)
    assert combined["layer_mean"]["delta"]["ci_low"] <= 0 <= combined["layer_mean"]["delta"]["ci_high"]


def test_a_sense_effect_independent_of_the_vectors_survives():
    corpus, geometry, rng = planted(1, spread=0.0)
    # Vectors carry no sense: redraw them per example, independently of the synset.
    vectors = rng.standard_normal((len(corpus.group), 2, 16))
    geometry = pair_geometry(vectors, corpus, [1, 2], [1, 2])
    kappa = (
        0.3
        + 0.3 * geometry.cosine
        + 0.1 * corpus.pair_same[:, None]
        + 0.03 * rng.standard_normal((len(corpus.pair_a), 2))
    )
    hidden, _ = hidden_state_control(kappa, corpus, geometry, OPTIONS)
    geo = hidden["layer_mean"]["delta"]
    assert geo["ci_low"] > 0 and geo["ci_low"] <= 0.1 <= geo["ci_high"]
    assert hidden["explained"]["ci_low"] <= 0 <= hidden["explained"]["ci_high"]
    assert hidden["delta"] is not None and len(hidden["delta"]["estimate"]) == 2  # every MoE layer stored


def test_without_vectors_the_controls_are_unchanged():
    corpus, geometry, rng = planted(2)
    controls = {"context_words": {"method": "x"}, "all": {"method": "y"}}
    kappa = rng.uniform(size=(len(corpus.pair_a), 2))
    assert fold_hidden_state(controls, kappa, corpus, None, OPTIONS) is controls
    folded = fold_hidden_state(controls, kappa, corpus, geometry, OPTIONS)
    assert list(folded) == ["context_words", "hidden_state", "all"]
    assert "router-input cosine" in folded["all"]["method"] and folded["all"]["replaces"] == "y"
