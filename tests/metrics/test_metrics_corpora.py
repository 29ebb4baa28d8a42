"""Reasoning-trace nPMI and segments, the routing-only probe, and substitution overlap, by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from metrics_synth import Tokens, model_row, random_fn, senses_table, write_atlas

from atlas_build.atlas.schema import SUBSTITUTIONS_SCHEMA
from atlas_build.atlas.synthetic import random_routing
from atlas_build.metrics.experts.blocks import npmi


def test_npmi_bounds_and_independence():
    # never together -> -1; always together (p(x,y) = p(x) = p(y)) -> 1; independent -> 0.
    assert npmi(0, 5, 5, 20) == -1
    assert npmi(5, 5, 5, 20) == pytest.approx(1.0)
    assert npmi(4, 8, 10, 20) == pytest.approx(0.0)  # p(x,y) = 0.2 = 0.4 * 0.5
    p_xy, p_x, p_y = 3 / 20, 5 / 20, 6 / 20
    assert npmi(3, 5, 6, 20) == pytest.approx(math.log(p_xy / (p_x * p_y)) / -math.log(p_xy))


def _small_senses(n_lemmas=2):
    rows = []
    for li in range(n_lemmas):
        for s in range(2):
            for e in range(2):
                rows.append(
                    {"lemma": f"lem{li}", "sense": s, "example": e, "words": ["a", f"w{e}"], "target_at": 1}
                )
    return senses_table(rows)


# ---- traces -----------------------------------------------------------------------------------------------

N_TR, K_TR = 8, 2


def trace_routing(tokens: Tokens, rng):
    """Layer 0: marker tokens -> {7, 6}, think -> {0, 1}, answer -> {4, 5}, other -> {2, 3};
    layer 1: every token -> {0, 1}."""
    t = len(tokens.text)
    experts = np.zeros((t, 2, K_TR), dtype=np.int64)
    experts[:, 0] = [2, 3]
    segment = np.array([s or "" for s in tokens.segment])
    marker = np.array([m is not None for m in tokens.marker])
    experts[segment == "think", 0] = [0, 1]
    experts[segment == "answer", 0] = [4, 5]
    experts[marker, 0] = [7, 6]
    experts[:, 1] = [0, 1]
    return experts


def test_trace_npmi_and_segments(tmp_path, compute):
    traces = [
        {
            "trace_id": f"t{i}",
            "tokens": [
                ("q", "prompt", None),
                ("hmm", "think", "hmm"),
                ("x", "think", None),
                ("wait", "think", "wait"),
            ]
            + [("y", "think", None), ("so", "answer", None), ("z", "answer", None), ("w", "answer", None)],
        }
        for i in range(3)
    ]
    row = model_row("tracer", random_init=False, n_experts=N_TR, n_layers=2, top_k=K_TR)
    root = write_atlas(tmp_path / "atlas", _small_senses(), [(row, trace_routing)], traces=traces)
    metrics = compute(root, min_count=2, n_bootstrap=50, n_permutations=9)
    tr = metrics["models"]["tracer"]["traces"]
    assert tr["n_tokens"] == 24 and tr["n_marker_tokens"] == 6
    npmi0, npmi1 = np.array(tr["npmi"][0]), np.array(tr["npmi"][1])
    # Layer 0: experts 6 and 7 are on exactly the marker tokens -> 1; experts never on markers -> -1.
    assert npmi0[7] == pytest.approx(1.0) and npmi0[6] == pytest.approx(1.0)
    assert npmi0[[0, 1, 2, 3, 4, 5]] == pytest.approx([-1] * 6)
    assert {e["expert"] for e in tr["top_experts"][0][:2]} == {6, 7}
    # Layer 1: experts 0 and 1 are on every token: independent of markers -> 0.
    assert npmi1[0] == pytest.approx(0.0) and npmi1[1] == pytest.approx(0.0)
    assert set(tr["markers"]) == {"hmm", "wait"}
    assert tr["markers"]["wait"]["n"] == 3
    seg = tr["segments"]
    assert seg["n_tokens"] == {"prompt": 3, "think": 12, "answer": 9}
    # think (markers 6,7 + 0,1) and answer (4,5) are disjoint in layer 0 -> JS = 1; identical in layer 1 -> 0.
    assert seg["js_divergence_think_answer"] == pytest.approx([1.0, 0.0], abs=1e-6)
    np.testing.assert_allclose(seg["load"]["answer"][0], [0, 0, 0, 0, 0.5, 0.5, 0, 0])


# ---- probe ------------------------------------------------------------------------------------------------

N_PR, K_PR = 32, 2


def probe_senses():
    # lemma 0: sense A x3, sense B x1; lemma 1: A x2, B x2.
    rows = []
    for li, counts in enumerate([(3, 1), (2, 2)]):
        for s, n in enumerate(counts):
            for e in range(n):
                rows.append(
                    {"lemma": f"lem{li}", "sense": s, "example": e, "words": ["the", f"c{e}"], "target_at": 1}
                )
    return senses_table(rows)


def sense_routing(informative: bool):
    def fn(tokens: Tokens, rng):
        experts = random_routing(rng, len(tokens.text), 2, N_PR, K_PR)[0]
        for t in np.flatnonzero(tokens.is_target):
            row = tokens.texts[tokens.text[t]]["row"]
            code = (int(row["lemma"][3:]) * 2 + row["sense_number"] - 1) if informative else 0
            experts[t] = (code * K_PR + np.arange(K_PR)) % N_PR
        return experts

    return fn


def test_probe_and_mfs_baseline_by_hand(tmp_path, compute):
    rows = [
        (
            model_row("sense-aware", random_init=False, n_experts=N_PR, n_layers=2, top_k=K_PR),
            sense_routing(True),
        ),
        (
            model_row("sense-blind", random_init=False, n_experts=N_PR, n_layers=2, top_k=K_PR),
            sense_routing(False),
        ),
    ]
    root = write_atlas(tmp_path / "atlas", probe_senses(), rows)
    metrics = compute(root, n_bootstrap=50, n_permutations=9)
    aware = metrics["models"]["sense-aware"]["probe"]
    blind = metrics["models"]["sense-blind"]["probe"]
    # MFS leave-one-out: lemma 0 -> A examples right (3), B wrong; lemma 1 (2 + 2) -> all wrong: 3/8.
    assert aware["n_examples"] == 8 and aware["n_lemmas"] == 2
    assert aware["mfs_accuracy"]["estimate"] == pytest.approx(3 / 8)
    # Probe: every example's nearest neighbours share its sense, except lemma 0's lone sense-B example, whose
    # neighbours (all sense A) tie -> A: 7/8.
    assert aware["accuracy"]["estimate"] == pytest.approx(7 / 8)
    assert aware["difference"]["estimate"] == pytest.approx(1 / 2)
    # Identical routing for every target: all neighbours tie, the vote is the majority -> the MFS answer.
    assert blind["accuracy"]["estimate"] == pytest.approx(3 / 8)
    assert blind["difference"]["estimate"] == pytest.approx(0.0)


# ---- substitutions ----------------------------------------------------------------------------------------

N_SB, K_SB = 32, 4


def substitutions_for(senses: pa.Table) -> pa.Table:
    rows = []
    for row in senses.to_pylist():
        for relation, word in (("synonym", "synword"), ("other-sense", "othword")):
            text = row["text"][: row["target_start"]] + word + row["text"][row["target_end"] :]
            rows.append(
                {
                    "substitution_id": f"{row['example_id']}|{relation}",
                    "example_id": row["example_id"],
                    "lemma": row["lemma"],
                    "pos": "n",
                    "relation": relation,
                    "substitute": word,
                    "substitute_synset": "x.n.01",
                    "text": text,
                    "target_start": row["target_start"],
                    "target_end": row["target_start"] + len(word),
                    "source": "synthetic",
                }
            )
    return pa.Table.from_pylist(rows, schema=SUBSTITUTIONS_SCHEMA)


def substitution_routing(tokens: Tokens, rng):
    """Layer 0: a synonym keeps the base target's set, an other-sense substitute gets a disjoint one."""
    experts = random_routing(rng, len(tokens.text), 2, N_SB, K_SB)[0]
    example_index = {t["id"]: i for i, t in enumerate(tokens.texts) if t["corpus"] == "senses"}
    for t in np.flatnonzero(tokens.is_target):
        info = tokens.texts[tokens.text[t]]
        base = example_index[info["row"]["example_id"]]
        shift = (
            N_SB // 2 if info["corpus"] == "substitutions" and info["row"]["relation"] == "other-sense" else 0
        )
        experts[t, 0] = (base * K_SB + np.arange(K_SB)) % (N_SB // 2) + shift
    return experts


def test_substitution_overlap_by_relation(tmp_path, compute):
    senses = _small_senses(n_lemmas=12)
    row = model_row("subst", random_init=False, n_experts=N_SB, n_layers=2, top_k=K_SB)
    root = write_atlas(
        tmp_path / "atlas", senses, [(row, substitution_routing)], substitutions=substitutions_for(senses)
    )
    sub = compute(root, n_bootstrap=500, n_permutations=9)["models"]["subst"]["substitutions"]
    assert sub["n"] == {"other-sense": 48, "synonym": 48}
    # metrics.json keeps 6 significant digits.
    assert sub["kappa"]["synonym"]["estimate"][0] == pytest.approx(1.0, rel=1e-5)
    assert sub["kappa"]["other-sense"]["estimate"][0] == pytest.approx(-K_SB / (N_SB - K_SB), rel=1e-5)
    assert sub["delta"]["estimate"][0] == pytest.approx(N_SB / (N_SB - K_SB), rel=1e-5)
    assert sub["delta"]["ci_low"][1] <= 0 <= sub["delta"]["ci_high"][1]  # layer 1 is random


def test_absent_corpora_are_null_and_said(tmp_path, compute):
    row = model_row("plain", random_init=False, n_experts=16, n_layers=2, top_k=2)
    root = write_atlas(tmp_path / "atlas", _small_senses(), [(row, random_fn(16, 2, 2))])
    metrics = compute(root, n_bootstrap=50, n_permutations=9)
    assert metrics["corpus"]["substitutions"] is None and metrics["corpus"]["traces"] is None
    assert metrics["models"]["plain"]["traces"] is None
    assert metrics["models"]["plain"]["substitutions"] is None
    assert any("no reasoning traces" in n for n in metrics["notes"])
