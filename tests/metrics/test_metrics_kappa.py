"""κ, bitset overlap and target selection on hand-computable cases."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from atlas_build.atlas.routing import nested_fixed_list
from atlas_build.metrics.estimators.overlap import chance_kappa, expert_bitsets, pair_overlap, select_targets


@pytest.mark.parametrize(("k", "n"), [(1, 2), (2, 8), (4, 32), (8, 256), (6, 64)])
def test_kappa_identical_is_one_and_disjoint_is_known_negative(k, n):
    assert chance_kappa(k, k, n) == pytest.approx(1.0)
    # (0 − k²/N) / (k − k²/N) = −k / (N − k)
    assert chance_kappa(0, k, n) == pytest.approx(-k / (n - k))
    assert chance_kappa(k * k / n, k, n) == pytest.approx(0.0)


def test_kappa_of_real_sets_identical_and_disjoint():
    n, k = 64, 4
    a = np.array([[[1, 2, 3, 4]], [[1, 2, 3, 4]], [[60, 61, 62, 63]]])  # [3 texts, 1 layer, k]
    targets = select_targets(_rows(["x", "y", "z"], [0, 0, 0], a, n), pa.array(["x", "y", "z"]), "last", n)
    overlap, valid = pair_overlap(targets, np.array([0, 0]), targets, np.array([1, 2]))
    assert valid.all()
    np.testing.assert_allclose(chance_kappa(overlap, k, n)[:, 0], [1.0, -k / (n - k)])


@pytest.mark.parametrize("n_experts", [8, 64, 100, 256])
def test_bitset_overlap_matches_python_sets(n_experts):
    rng = np.random.default_rng(n_experts)
    k, layers, rows = 5, 3, 40
    experts = np.stack(
        [np.stack([rng.choice(n_experts, k, replace=False) for _ in range(layers)]) for _ in range(rows)]
    )
    bits = expert_bitsets(experts, n_experts)
    assert bits.shape == (rows, layers, -(-n_experts // 64))
    ia, ib = rng.integers(0, rows, 30), rng.integers(0, rows, 30)
    got = np.bitwise_count(bits[ia] & bits[ib]).sum(-1)
    want = [
        [len(set(experts[i, layer]) & set(experts[j, layer])) for layer in range(layers)]
        for i, j in zip(ia, ib, strict=True)
    ]
    np.testing.assert_array_equal(got, want)


def _rows(ids, token_index, experts, n_experts):
    experts = np.asarray(experts)
    return pa.table(
        {
            "source_id": pa.array(ids),
            "token_index": pa.array(np.asarray(token_index, dtype=np.int32)),
            "experts": nested_fixed_list(experts.astype(np.uint8), pa.uint8()),
        }
    )


def test_target_modes_first_last_all():
    n = 16
    # Text "a" has target sub-tokens at token_index 3 and 2 (stored out of order), "b" one at index 1,
    # "c" none.
    ids = ["a", "a", "b"]
    token_index = [3, 2, 1]
    experts = np.array([[[0, 1]], [[2, 3]], [[0, 2]]])
    rows = _rows(ids, token_index, experts, n)
    wanted = pa.array(["a", "b", "c"])
    first = select_targets(rows, wanted, "first", n)
    last = select_targets(rows, wanted, "last", n)
    all_ = select_targets(rows, wanted, "all", n)
    np.testing.assert_array_equal(first.count, [1, 1, 0])
    np.testing.assert_array_equal(all_.count, [2, 1, 0])
    ia, ib = np.array([0]), np.array([1])  # a vs b
    # first sub-token of a = index 2 -> {2,3}: overlap with {0,2} = 1; last = index 3 -> {0,1}: overlap 1 ...
    assert pair_overlap(first, ia, first, ib)[0][0, 0] == 1
    assert pair_overlap(last, ia, last, ib)[0][0, 0] == 1
    # ... so use a pair with itself to separate them: first vs last of "a" share nothing.
    assert pair_overlap(first, np.array([0]), last, np.array([0]))[0][0, 0] == 0
    # all: mean over the 2 x 2 sub-token pairs of a with a = (2 + 0 + 0 + 2) / 4 = 1.
    assert pair_overlap(all_, np.array([0]), all_, np.array([0]))[0][0, 0] == pytest.approx(1.0)
    overlap, valid = pair_overlap(all_, np.array([0, 2]), all_, np.array([1, 1]))
    assert valid.tolist() == [True, False]
    assert np.isnan(overlap[1]).all()
    with pytest.raises(ValueError, match="target must be one of"):
        select_targets(rows, wanted, "middle", n)
