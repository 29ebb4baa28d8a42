"""Cluster bootstrap and within-lemma permutations."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_build.metrics.estimators.stats import (
    BCA_MAX_CLUSTERS,
    ci_method,
    cluster_bootstrap,
    cluster_sums,
    label_permutation_test,
    within_group_permutations,
)


def test_cluster_sums():
    cluster = np.array([2, 0, 2, 2])
    values = np.array([[1.0], [2.0], [3.0], [4.0]])
    np.testing.assert_array_equal(cluster_sums(cluster, values, 4), [[2.0], [0.0], [8.0], [0.0]])


@pytest.mark.parametrize("n_clusters", [200, BCA_MAX_CLUSTERS + 500])
def test_cluster_bootstrap_of_a_ratio_of_means(n_clusters):
    rng = np.random.default_rng(n_clusters)
    sizes = rng.integers(1, 6, n_clusters).astype(float)
    effect = rng.normal(0.3, 1.0, n_clusters)  # cluster-level noise: pairs of one lemma move together
    sums = np.column_stack([sizes, sizes * effect])
    est, low, high = cluster_bootstrap(sums, lambda t: t[..., 1:] / t[..., :1], n_resamples=999)
    assert est[0] == pytest.approx((sizes * effect).sum() / sizes.sum())
    # Width ~ 2 x 1.96 x SE of a size-weighted mean of unit-variance cluster effects, around the estimate.
    se = np.sqrt((sizes**2).sum()) / sizes.sum()
    assert (high[0] - low[0]) == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert low[0] + 0.3 * se < est[0] < high[0] - 0.3 * se
    assert ci_method(n_clusters) == ("BCa" if n_clusters <= BCA_MAX_CLUSTERS else "percentile")


def test_within_group_permutations_keep_each_groups_labels():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    labels = np.array([5, 5, 6, 7, 8, 9, 1, 2, 2, 3])
    perms = within_group_permutations(labels, groups, 200, rng)
    for g in np.unique(groups):
        members = groups == g
        assert (np.sort(perms[:, members], axis=1) == np.sort(labels[members])).all()
    assert len({tuple(p) for p in perms}) > 20  # actually shuffled


def test_label_permutation_p_values():
    # 40 lemmas x 4 examples (2 senses); pairs within lemmas. Same-sense pairs get +1: p is tiny.
    groups = np.repeat(np.arange(40), 4)
    labels = np.tile([0, 0, 1, 1], 40) + 2 * groups
    a, b = np.triu_indices(4, 1)
    pa = (groups[::4][:, None] * 4 + a).ravel()
    pb = (groups[::4][:, None] * 4 + b).ravel()
    same = labels[pa] == labels[pb]
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.5, len(pa))
    p_effect = label_permutation_test((noise + same)[:, None], pa, pb, labels, groups, n_permutations=199)
    p_null = label_permutation_test(noise[:, None], pa, pb, labels, groups, n_permutations=199)
    assert p_effect[0] == pytest.approx(1 / 200)
    assert p_null[0] > 0.05
