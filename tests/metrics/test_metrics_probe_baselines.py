"""The calibrated probe (permutation null and lexical nearest neighbours) and the router-aware baselines
(uniform routing under top-k / n_group / topk_group, checked by enumeration and by simulation)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from metrics_synth import Tokens, model_row, senses_table, write_atlas

from atlas_build.atlas.synthetic import random_routing
from atlas_build.metrics.experts import blocks as ex
from atlas_build.metrics.experts.baselines import RouterConstraints, simulate_uniform

N, K = 16, 2


def many_senses(n_lemmas=30):
    rows = []
    for li in range(n_lemmas):
        for s in range(2):
            for e in range(3):
                words = ["the", f"c{e}", f"w{li}"]
                rows.append({"lemma": f"lem{li}", "sense": s, "example": e, "words": words, "target_at": 1})
    return senses_table(rows)


def routing(kind: str):
    def fn(tokens: Tokens, rng):
        experts = random_routing(rng, len(tokens.text), 2, N, K)[0]
        for t in np.flatnonzero(tokens.is_target):
            row = tokens.texts[tokens.text[t]]["row"]
            code = row["sense_number"] - 1 if kind == "sense" else 0
            experts[t] = (code * K + np.arange(K)) % N
        return experts

    return fn


@pytest.fixture(scope="module")
def probes(tmp_path_factory, compute):
    models = [
        (model_row("sense-aware", random_init=False, n_experts=N, n_layers=2, top_k=K), routing("sense")),
        (model_row("sense-blind", random_init=False, n_experts=N, n_layers=2, top_k=K), routing("blind")),
    ]
    root = write_atlas(tmp_path_factory.mktemp("probe"), many_senses(), models)
    metrics = compute(root, n_bootstrap=200, n_permutations=99)
    return {slug: metrics["models"][slug]["probe"] for slug in ("sense-aware", "sense-blind")}


def test_sense_blind_probe_sits_on_its_null(probes):
    blind = probes["sense-blind"]
    # Every target routes alike: all neighbours tie, the vote is the lemma's majority whatever the labels, so
    # every permuted labelling scores exactly the observed accuracy.
    assert blind["null"]["mean"] == pytest.approx(blind["accuracy"]["estimate"])
    assert blind["null"]["p_value"] == 1.0
    assert blind["calibrated"]["beats_null"] is False


def test_sense_aware_probe_beats_its_null_and_the_lexical_neighbours(probes):
    aware = probes["sense-aware"]
    assert aware["accuracy"]["estimate"] == pytest.approx(1.0)
    assert aware["null"]["mean"] < 0.7
    assert aware["null"]["p_value"] == pytest.approx(1 / 100)
    low, high = aware["null"]["p_value_interval"]
    assert low == 0 and 0 < high < 0.05
    # Context words: c{e} is shared across senses; token identity: one target form for all. Neither sees sense.
    assert set(aware["lexical"]) == {"context_words", "token_identity", "lexical"}
    for block in aware["lexical"].values():
        assert block["accuracy"]["estimate"] < 0.8
        assert block["difference"]["ci_low"] > 0
    assert aware["calibrated"] == {"beats_mfs": True, "beats_null": True, "beats_lexical": True}


def enumerate_conditional(n_experts, top_k, n_group, topk_group):
    """P(E_j | E_i) by enumerating every choice of groups and of k experts among them (equally likely)."""
    size = n_experts // n_group
    joint = np.zeros((n_experts, n_experts))
    for groups in itertools.combinations(range(n_group), topk_group):
        eligible = [g * size + e for g in groups for e in range(size)]
        for chosen in itertools.combinations(eligible, top_k):
            for i in chosen:
                for j in chosen:
                    joint[i, j] += 1
    return joint / np.diagonal(joint)[:, None]


def test_group_limited_baseline_by_enumeration_and_simulation():
    c = RouterConstraints(n_experts=8, top_k=3, n_group=4, topk_group=2)
    exact = enumerate_conditional(8, 3, 4, 2)
    within, across = c.conditional()
    assert within == pytest.approx(exact[0, 1]) and across == pytest.approx(exact[0, 2])
    np.testing.assert_allclose(c.conditional_matrix()[~np.eye(8, dtype=bool)], exact[~np.eye(8, dtype=bool)])
    experts = simulate_uniform(c, 200_000, seed=1)
    groups = experts // c.group_size
    assert (np.sort(experts, axis=0)[1:] != np.sort(experts, axis=0)[:-1]).all()  # k distinct per token
    assert max(len(set(col)) for col in groups.T[:1000]) <= 2  # within topk_group groups
    observed = ex.conditional_coactivation(ex.coactivation_counts(experts, 8))
    off = ~np.eye(8, dtype=bool)
    np.testing.assert_allclose(observed[off], exact[off], atol=0.01)


def test_deepseek_shaped_baselines_are_the_issues_numbers():
    tiny = RouterConstraints.of({"n_routed_experts": 32, "top_k": 8, "n_group": 8, "topk_group": 4})
    assert tiny.conditional() == pytest.approx((7 / 15, 7 / 15 * 3 / 7))
    r1 = RouterConstraints.of({"n_routed_experts": 256, "top_k": 8, "n_group": 8, "topk_group": 4})
    assert r1.conditional() == pytest.approx((0.0551, 0.0236), abs=5e-4)
    plain = RouterConstraints.of({"n_routed_experts": 64, "top_k": 8, "n_group": None, "topk_group": None})
    assert plain.conditional() == pytest.approx((7 / 63, 7 / 63))
