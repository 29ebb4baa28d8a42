"""Expert load, routing entropy, co-activation and token-id specialisation on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from atlas_build.atlas.routing import nested_fixed_list
from atlas_build.metrics.experts import blocks as ex
from dataset_cards.synthetic import write_synthetic_atlas


def test_load_entropy_and_coactivation_by_hand():
    # N = 4, k = 2; tokens {0,1}, {0,1}, {2,3}, {0,2}  (one layer, [k, T])
    layer = np.array([[0, 0, 2, 0], [1, 1, 3, 2]])
    load = ex.load_counts(layer, 4)
    np.testing.assert_array_equal(load, [3, 2, 2, 1])
    p = np.array([3, 2, 2, 1]) / 8
    assert ex.normalised_entropy(load) == pytest.approx(-(p * np.log(p)).sum() / math.log(4))
    assert ex.normalised_entropy(np.array([5, 5, 5, 5])) == pytest.approx(1.0)
    assert ex.normalised_entropy(np.array([7, 0, 0, 0])) == pytest.approx(0.0)
    counts = ex.coactivation_counts(layer, 4)
    want = np.array(
        [
            [3, 2, 1, 0],
            [2, 2, 0, 0],
            [1, 0, 2, 1],
            [0, 0, 1, 1],
        ]
    )
    np.testing.assert_array_equal(counts, want)
    cond = ex.conditional_coactivation(counts)
    assert cond[0, 1] == pytest.approx(2 / 3)  # P(E_1 | E_0)
    assert cond[1, 0] == pytest.approx(1.0)  # every token with 1 also has 0
    assert cond[0, 3] == 0
    assert cond[3, 2] == pytest.approx(1.0)


def test_coactivation_is_symmetric_and_spans_slices():
    rng = np.random.default_rng(0)
    n, k, t = 16, 3, 1000
    layer = np.stack([rng.choice(n, k, replace=False) for _ in range(t)]).T
    whole = ex.coactivation_counts(layer, n)
    np.testing.assert_array_equal(ex.coactivation_counts(layer, n, slice_tokens=7), whole)  # many slices
    np.testing.assert_array_equal(whole, whole.T)
    brute = np.zeros((n, n), int)
    for col in layer.T:
        for i in col:
            for j in col:
                brute[i, j] += 1
    np.testing.assert_array_equal(whole, brute)


def test_token_specialisation_by_hand():
    # N = 4, k = 2.  Token A (id 10) x5: top-1 experts 0,0,0,1,2 -> 3/5; top-k sets {0,1},{0,1},{0,1},{1,0},{2,1}
    # -> expert 1 in all 5 -> 5/5.  Token B (id 11) x4: below m = 5, ignored.  Token C (id 12) x5: always
    # {3, 0} -> 1 and 1.
    ids = np.array([10] * 5 + [11] * 4 + [12] * 5)
    first = np.array([0, 0, 0, 1, 2] + [0, 1, 2, 3] + [3] * 5)
    second = np.array([1, 1, 1, 0, 1] + [1, 2, 3, 0] + [0] * 5)
    layer = np.stack([first, second])
    ranks = ex.token_ranks(ids, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(ranks.occurrences, [5, 4, 5])
    np.testing.assert_array_equal(ranks.eligible, [True, False, True])
    got = ex.token_specialisation(layer, ranks, 4)
    assert got["top1"] == pytest.approx((3 / 5 + 1) / 2)
    assert got["topk"] == pytest.approx((5 / 5 + 1) / 2)
    # OLMoE's definition counts every token id: B's top-1 experts 0,1,2,3 -> 1/4; its sets {0,1},{1,2},
    # {2,3},{3,0} hold each expert twice -> 2/4.
    assert got["olmoe_top1"] == pytest.approx((3 / 5 + 1 / 4 + 1) / 3)
    assert got["olmoe_topk"] == pytest.approx((1 + 2 / 4 + 1) / 3)
    # The shuffle keeps every token's count and every expert's load.
    kept = ranks.eligible[ranks.rank]
    np.testing.assert_array_equal(np.sort(ranks.shuffled[ranks.shuffled >= 0]), np.sort(ranks.rank[kept]))


def test_shuffled_baseline_is_the_fair_one():
    rng = np.random.default_rng(1)
    n_experts, n_ids, per_id = 32, 40, 6
    ids = np.repeat(np.arange(n_ids), per_id)
    # Specialised: each token id always routes to its own expert first.
    special = np.stack([ids % n_experts, (ids + 1) % n_experts])
    ranks = ex.token_ranks(ids, 5, rng)
    got = ex.token_specialisation(special, ranks, n_experts)
    assert got["top1"] == pytest.approx(1.0)
    assert got["top1_shuffled"] < 0.5
    # Random routing: small counts inflate the share far above 1/N, and the shuffle shows the same inflation.
    random = np.stack([rng.permutation(n_experts)[:2] for _ in range(len(ids))]).T
    got = ex.token_specialisation(random, ranks, n_experts)
    assert got["top1"] > 3 / n_experts
    assert got["top1"] == pytest.approx(got["top1_shuffled"], abs=0.05)
    assert got["topk"] == pytest.approx(got["topk_shuffled"], abs=0.05)


def test_token_specialisation_over_slices_matches():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, 3000)
    layer = np.stack([rng.permutation(8)[:3] for _ in range(3000)]).T
    ranks = ex.token_ranks(ids, 5, np.random.default_rng(0))
    whole = ex.token_specialisation(layer, ranks, 8)
    assert ex.token_specialisation(layer, ranks, 8, slice_tokens=77) == pytest.approx(whole)


def test_layer_blocks_reassemble_chunks_within_budget():
    rng = np.random.default_rng(3)
    experts = rng.integers(0, 200, (50, 5, 3)).astype(np.uint8)
    column = pa.chunked_array(
        [nested_fixed_list(experts[:20], pa.uint8()), nested_fixed_list(experts[20:], pa.uint8())]
    )
    for budget in (1, 10**9):  # one layer per block / all layers in one block
        seen = []
        for first, block in ex.layer_blocks(column, 5, 3, budget_bytes=budget):
            for i, layer in enumerate(block):
                np.testing.assert_array_equal(layer, experts[:, first + i, :].T)
                seen.append(first + i)
        assert seen == list(range(5))


def test_expert_metrics_through_an_atlas(tmp_path, compute):
    root = write_synthetic_atlas(tmp_path / "atlas", n_lemmas=10, n_experts=16, n_layers=3, top_k=2)
    entry = compute(root, n_bootstrap=50, n_permutations=9)["models"]["synthetic-moe"]
    load = np.array(entry["experts"]["load"])
    assert load.shape == (3, 16)
    np.testing.assert_allclose(load.sum(axis=1), 1.0, atol=1e-5)
    assert all(0.9 < h <= 1.0 for h in entry["experts"]["entropy"])
    co = entry["experts"]["coactivation"]
    assert co["independent_baseline"] == pytest.approx(1 / 15)
    assert len(co["top_pairs"]) == 3
    ts = entry["token_specialisation"]
    assert ts["top1"]["random"] == pytest.approx(1 / 16)
    assert ts["topk"]["random"] == pytest.approx(2 / 16)
    assert len(ts["top1"]["share"]) == 3
    assert entry["traces"] is None


def test_forked_workers_match_the_serial_pass(tmp_path, hf_cache):
    from atlas_build.metrics.provenance.source import AtlasSource

    root = write_synthetic_atlas(tmp_path / "atlas", n_lemmas=10, n_experts=16, n_layers=5, top_k=3)
    routing = AtlasSource(root, cache_dir=hf_cache).routing("synthetic-moe")
    serial = ex.expert_pass(routing, 16, 5, 3, min_count=2, workers=1)
    forked = ex.expert_pass(routing, 16, 5, 3, min_count=2, workers=2)
    np.testing.assert_array_equal(forked.load, serial.load)
    np.testing.assert_array_equal(forked.coactivation, serial.coactivation)
    assert forked.specialisation == serial.specialisation
    assert len(serial.specialisation) == 5
