"""The controls: float64 and full-rank designs (against a plain bootstrap written here), token identity by
hand, survival from raw + every control, Monte Carlo p-value intervals and their printed digits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from atlas_build.metrics.compute import survival
from atlas_build.metrics.controls.regression import (
    CONTROL_NAMES,
    Block,
    DesignError,
    jaccard_strata,
    pair_controls,
    select_columns,
    solve_normal_equations,
)
from atlas_build.metrics.estimators.identity import NO_LEFT, NO_RIGHT, TargetIdentity, target_identity
from atlas_build.metrics.estimators.senses import BootstrapOptions, ContextWords, SenseCorpus
from atlas_build.metrics.estimators.stats import monte_carlo_interval
from atlas_build.metrics.report.markdown import format_p


def corpus_of(pair_group, same, jaccard) -> SenseCorpus:
    """A SenseCorpus holding only what the pair controls read (pairs, clusters, Jaccard)."""
    n = len(same)
    empty = np.zeros(0, np.int64)
    return SenseCorpus(
        example_ids=pa.array([f"e{i}" for i in range(2 * n)]),
        group=np.repeat(pair_group, 2),
        n_groups=int(pair_group.max()) + 1,
        synset=np.arange(2 * n),
        local_sense=np.zeros(2 * n, np.int64),
        pair_a=np.arange(0, 2 * n, 2),
        pair_b=np.arange(1, 2 * n, 2),
        pair_same=same,
        pair_group=pair_group,
        jaccard=jaccard,
        form=np.zeros(2 * n, np.int64),
        words=ContextWords(empty, np.zeros(2 * n, np.int64), np.zeros(2 * n, np.int64), 1),
    )


@pytest.fixture(scope="module")
def failing_structure():
    """The structure that broke the float32 / rank-deficient fit: 64% of pairs at J = 0, many J values."""
    rng = np.random.default_rng(11)
    n_lemmas, per = 300, 10
    group = np.repeat(np.arange(n_lemmas), per)
    same = rng.random(len(group)) < 0.45
    nonzero = rng.random(len(group)) < 0.36
    jaccard = np.where(nonzero, np.round(rng.uniform(0.05, 0.6, len(group)), 2), 0.0)
    lemma_effect = rng.normal(0, 0.15, n_lemmas)[group]
    signal = 0.2 + 0.03 * same + 0.5 * jaccard + lemma_effect
    kappa = signal[:, None] + rng.normal(0, 0.3, (len(group), 2))
    return group, same, jaccard, kappa


def test_failing_structure_is_the_one_of_the_issue(failing_structure):
    _, _, jaccard, _ = failing_structure
    assert len(np.unique(jaccard)) >= 10
    assert (jaccard == 0).mean() >= 0.6
    strata, linear = jaccard_strata(jaccard)
    assert linear  # deciles + linear J, and stratum 0 holds no pairs (the rank-deficient design of old)
    assert not (strata == 0).any()


def plain_percentile_bootstrap(group, same, jaccard, kappa, n_resamples, seed):
    """β_same of κ ~ 1 + same + decile dummies + J, percentile cluster bootstrap, numpy lstsq per replicate."""
    edges = np.unique(np.quantile(jaccard, np.linspace(0, 1, 11)[1:-1]))
    strata = np.searchsorted(edges, jaccard, side="right")
    levels = np.unique(strata)

    def design(rows):
        cols = [np.ones(len(rows)), same[rows].astype(float), jaccard[rows]]
        cols += [(strata[rows] == v).astype(float) for v in levels[1:]]
        return np.column_stack(cols)

    def beta(rows):
        coef, *_ = np.linalg.lstsq(design(rows), kappa[rows], rcond=None)
        return np.r_[coef[1], coef[1].mean()]

    members = [np.flatnonzero(group == g) for g in np.unique(group)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(members), len(members))
        draws.append(beta(np.concatenate([members[i] for i in pick])))
    draws = np.array(draws)
    return beta(np.arange(len(group))), np.quantile(draws, 0.025, axis=0), np.quantile(draws, 0.975, axis=0)


def test_context_words_ci_matches_a_plain_float64_bootstrap(failing_structure):
    group, same, jaccard, kappa = failing_structure
    corpus = corpus_of(group, same, jaccard)
    got = pair_controls(kappa, corpus, None, BootstrapOptions(n_resamples=2000, seed=3))["context_words"]
    est, low, high = plain_percentile_bootstrap(group, same, jaccard, kappa, 1500, seed=5)
    shipped = [*zip(got["delta"]["estimate"], got["delta"]["ci_low"], got["delta"]["ci_high"], strict=True)]
    shipped.append(tuple(got["layer_mean"]["delta"][k] for k in ("estimate", "ci_low", "ci_high")))
    for i, (e, lo, hi) in enumerate(shipped):
        assert e == pytest.approx(est[i], abs=1e-10)  # the same estimator, float64
        assert lo == pytest.approx(low[i], abs=0.005), i
        assert hi == pytest.approx(high[i], abs=0.005), i
    assert got["layer_mean"]["delta"]["ci_low"] > 0  # the planted +0.03 is resolved, not float32 noise


def test_design_is_full_rank_and_refuses_a_determined_same():
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    stratum = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    rows = np.arange(8)
    # A duplicated factor adds only redundant columns: they are dropped, the fit is the same.
    block = Block.of(rows, same, [], [stratum, stratum.copy()])
    gram = block.total_gram(8)
    x = np.column_stack([np.ones(8), same, *(stratum == v for v in (0, 1)), *(stratum == v for v in (0, 1))])
    np.testing.assert_array_equal(gram, x.T @ x)  # the (lemma, level) sums are X'X
    keep = select_columns(gram, block.columns(False, [0, 1]))
    assert len(keep) == 4 and np.linalg.matrix_rank(x[:, keep]) == 4
    determined = Block.of(rows, same, [], [same.astype(int)])
    with pytest.raises(DesignError):
        select_columns(determined.total_gram(8), determined.columns(False, [0]))
    constant = Block.of(rows, np.ones(8, bool), [], [])
    with pytest.raises(DesignError):
        select_columns(constant.total_gram(8), constant.columns(False, []))


def test_an_absent_level_solves_as_if_its_column_were_removed():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(40), rng.random(40) < 0.5, rng.random(40) < 0.3, np.zeros(40)])
    y = rng.normal(size=(40, 2))
    got = solve_normal_equations(x.T @ x, x.T @ y)
    expected, *_ = np.linalg.lstsq(x[:, :3], y, rcond=None)
    np.testing.assert_allclose(got[:3], expected, atol=1e-12)
    assert (got[3] == 0).all()


def test_token_identity_by_hand():
    # Texts: e0 = [BOS] a b|c| d  (target b c), e1 = [BOS] a |b c|  (target at the end), e2 = |x| d.
    rows = [
        ("e0", 0, 1, False),
        ("e0", 1, 5, False),
        ("e0", 2, 7, True),
        ("e0", 3, 8, True),
        ("e0", 4, 9, False),
        ("e1", 0, 1, False),
        ("e1", 1, 5, False),
        ("e1", 2, 7, True),
        ("e1", 3, 8, True),
        ("e2", 0, 3, True),
        ("e2", 1, 9, False),
    ]
    table = pa.table(
        {
            "source_id": [r[0] for r in rows],
            "corpus": ["senses"] * len(rows),
            "token_index": [r[1] for r in rows],
            "token_id": [r[2] for r in rows],
            "is_target": [r[3] for r in rows],
        }
    ).take(pa.array([10, 3, 0, 7, 1, 4, 5, 2, 6, 9, 8]))  # row order must not matter
    ident = target_identity(table, pa.array(["e0", "e1", "e2"]), np.array([0, 0, 1]))
    assert ident.n_ids.tolist() == [2, 2, 1]
    assert ident.ids[:, :2].tolist() == [[7, 8], [7, 8], [3, -1]]
    assert ident.left.tolist() == [5, 5, NO_LEFT]
    assert ident.right.tolist() == [9, NO_RIGHT, 9]
    features = ident.pair_features(np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert features.tolist() == [
        [True, True, True, False],
        [False, False, False, True],
        [False, False, False, False],
    ]
    assert ident.pair_cells(np.array([0]), np.array([1])).tolist() == [0b1110]
    # The position of the first target token, and the neighbours two tokens away.
    assert ident.position.tolist() == [2, 2, 0]
    assert ident.left2.tolist() == [1, 1, NO_LEFT]
    assert ident.right2.tolist() == [NO_RIGHT, NO_RIGHT, NO_RIGHT]
    assert ident.neighbour_cells(np.array([0, 0]), np.array([1, 2])).tolist() == [0b10, 0b01]


def _iv(values):
    est, lo, hi = np.array(values, dtype=float).T
    return {"estimate": est.tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist()}


def _mean(est, lo, hi):
    return {"delta": {"estimate": est, "ci_low": lo, "ci_high": hi}}


def test_survival_needs_raw_and_every_control_per_layer():
    sp = {
        "delta": _iv([(0.1, 0.05, 0.15), (0.1, 0.05, 0.15), (0.0, -0.1, 0.1)]),
        "layer_mean": _mean(0.07, 0.03, 0.1),
        "controls": {
            "context_words": {"delta": _iv([(0.1, 0.02, 0.2)] * 3), "layer_mean": _mean(0.05, 0.01, 0.1)},
            "token_identity": {
                "delta": _iv([(0.1, 0.02, 0.2), (0.0, -0.1, 0.1), (0.1, 0.02, 0.2)]),
                "layer_mean": _mean(0.02, -0.01, 0.05),
            },
            # No per-layer values (other layer counts): its layer-mean sign counts at every layer.
            "null_model": {"delta": None, "layer_mean": _mean(0.05, 0.01, 0.1)},
        },
    }
    got = survival(sp, [3, 4, 5], random_init=False)
    assert got["layers"] == [3]
    assert got["layer_mean_survives"] is False
    assert got["removed_by"] == ["token_identity"]
    assert got["controls"] == {
        "context_words": "positive",
        "token_identity": "none",
        "null_model": "positive",
    }
    assert got["null_tested"] is True


def test_monte_carlo_interval_is_the_exact_binomial_one():
    # p = 0.019 at R = 999: b = 18 exceedances.
    low, high = monte_carlo_interval(0.019, 999)
    ci = stats.binomtest(18, 999).proportion_ci(method="exact")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert low < 0.019 < high
    assert format_p(0.019, [low, high]) == "0.02"  # 0.0190 would claim digits the run does not have
    assert format_p(0.001, monte_carlo_interval(0.001, 999)) == "< 0.004"
    assert format_p(0.5, monte_carlo_interval(0.5, 999)) == "0.50"


def _bucket_by_hand(p: int) -> int:
    """Position buckets written out: 0..7 each, then [8, 12), [12, 16), [16, 24), [24, 32), [32, 48), ..."""
    if p < 8:
        return p
    edges = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    return 8 + max(i for i, e in enumerate(edges) if p >= e)


def _lstsq_beta(kappa, same, factor):
    """β_same of κ ~ 1 + same + one dummy per level of `factor` but the first (numpy lstsq, float64)."""
    levels = np.unique(factor)
    x = np.column_stack([np.ones(len(same)), same.astype(float), *((factor == v) for v in levels[1:])])
    coef, *_ = np.linalg.lstsq(x.astype(np.float64), kappa, rcond=None)
    return coef[1]


@pytest.fixture(scope="module")
def planted_lexical_confounds():
    """Pairs whose κ at layer 0 follows a sense-blind lexical feature that same-sense pairs share more often
    (position bucket for one set of κ, both neighbours for another), with a true sense effect of +0.06 at
    layer 1 only."""
    rng = np.random.default_rng(21)
    n_lemmas, per = 300, 10
    group = np.repeat(np.arange(n_lemmas), per)
    n = len(group)
    same = rng.random(n) < 0.45
    jaccard = np.zeros(n)
    pos_a = rng.integers(0, 60, n)
    share = rng.random(n) < np.where(same, 0.7, 0.2)
    pos_b = np.where(share, pos_a, rng.integers(0, 60, n))
    left_a, right_a = rng.integers(0, 6, n), rng.integers(0, 6, n)
    both = rng.random(n) < np.where(same, 0.6, 0.15)
    left_b = np.where(both, left_a, rng.integers(0, 6, n))
    right_b = np.where(both, right_a, rng.integers(0, 6, n))
    identity = TargetIdentity(
        ids=np.zeros((2 * n, 1), np.int64),
        n_ids=np.ones(2 * n, np.int64),
        form=np.zeros(2 * n, np.int64),
        left=np.ravel(np.column_stack([left_a, left_b])),
        right=np.ravel(np.column_stack([right_a, right_b])),
        position=np.ravel(np.column_stack([pos_a, pos_b])),
    )
    bucket_a = np.array([_bucket_by_hand(p) for p in pos_a])
    bucket_b = np.array([_bucket_by_hand(p) for p in pos_b])
    noise = rng.normal(0, 0.2, (n, 2))
    sense = np.c_[np.zeros(n), 0.06 * same]
    by_position = 0.5 * (bucket_a == bucket_b)[:, None] + sense + noise
    neighbours = (left_a == left_b) & (right_a == right_b)
    by_neighbours = 0.5 * neighbours[:, None] + sense + noise
    position_pair = np.minimum(bucket_a, bucket_b) * 100 + np.maximum(bucket_a, bucket_b)
    cells = 2 * (left_a == left_b) + (right_a == right_b)
    corpus = corpus_of(group, same, jaccard)
    return corpus, identity, same, by_position, position_pair, by_neighbours, cells


def test_position_and_neighbours_controls_remove_their_confound_and_keep_the_sense_effect(
    planted_lexical_confounds,
):
    corpus, identity, same, by_position, position_pair, by_neighbours, cells = planted_lexical_confounds
    assert CONTROL_NAMES == ("context_words", "token_identity", "position", "neighbours", "null_model", "all")
    options = BootstrapOptions(n_resamples=400, seed=1)
    for kappa, name, factor in (
        (by_position, "position", position_pair),
        (by_neighbours, "neighbours", cells),
    ):
        got = pair_controls(kappa, corpus, identity, options)
        assert set(got) == {"context_words", "token_identity", "position", "neighbours", "all"}
        control = got[name]["delta"]
        # The same estimator as an independent float64 least squares on the control's strata.
        np.testing.assert_allclose(control["estimate"], _lstsq_beta(kappa, same, factor), atol=1e-10)
        raw = _lstsq_beta(kappa, same, np.zeros(len(same)))
        assert raw[0] > 0.1  # the sense-blind confound, as a raw effect
        assert control["ci_low"][0] <= 0 <= control["ci_high"][0], name  # removed at layer 0
        assert control["ci_low"][1] > 0 and control["estimate"][1] == pytest.approx(0.06, abs=0.03), name
        # Folded into `all`: removed there too, the sense effect kept.
        everything = got["all"]["delta"]
        assert everything["ci_low"][0] <= 0 <= everything["ci_high"][0], name
        assert everything["ci_low"][1] > 0, name
    # The other control leaves most of the confound (the features are independent here).
    got = pair_controls(by_position, corpus, identity, options)
    assert got["neighbours"]["delta"]["ci_low"][0] > 0.1


def test_explained_share_is_what_each_control_removes_of_the_raw_effect():
    from atlas_build.metrics.controls.verdict import explained

    sp = {
        "delta": _iv([(0.10, 0.05, 0.15), (0.02, -0.03, 0.07), (0.08, 0.01, 0.15)]),
        "layer_mean": _mean(0.0667, 0.03, 0.1),
        "controls": {
            "token_identity": {
                "delta": _iv([(0.01, -0.02, 0.04), (0.0, -0.1, 0.1), (0.02, -0.01, 0.05)]),
                "layer_mean": _mean(0.01, -0.01, 0.03),
            },
            "null_model": {"delta": None, "layer_mean": _mean(0.08, 0.02, 0.12)},
            "position": {"method": "m", "delta": None, "layer_mean": None, "error": "refused"},
        },
    }
    got = explained(sp)
    assert got["raw_ci_excludes_0"] is True
    assert got["share_removed"]["token_identity"] == pytest.approx((0.0667 - 0.01) / 0.0667)
    assert got["share_removed"]["null_model"] == pytest.approx((0.0667 - 0.08) / 0.0667)  # negative: larger
    assert got["share_removed"]["position"] is None
    # Per layer: the mean over the layers whose raw CI excludes 0 (layers 0 and 2, not 1).
    by_hand = np.mean([(0.10 - 0.01) / 0.10, (0.08 - 0.02) / 0.08])
    assert got["share_removed_per_layer_mean"]["token_identity"] == pytest.approx(by_hand)
    assert got["share_removed_per_layer_mean"]["null_model"] is None
