"""On the demo-sized atlas (RANDOM-INIT): the controls remove the random-init model's raw effect, the
null-model control checks itself (≈ 0 against the twin), and calibration on planted truth recovers a
planted sense effect at exactly its layers and removes each sense-blind confound with its own control.

On a small SYNTHETIC atlas (fast): the in-memory calibration (metrics/calibration/matrix.py) against
independent computations written here: κ of planted sets by set counting, the sense-specific phrasing by
copying, Δκ as a plain difference of means, the false-positive rates by recounting; and the planted truth
it must recover (a confound its control removes and another control does not, a confound that cannot
show on this corpus flagged as untestable, noise at the nominal level)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from atlas_build.commands.metrics import command
from atlas_build.metrics import MetricsOptions
from atlas_build.metrics.calibration.plants import PlantOptions, calibrate

OPTIONS = {"n_bootstrap": 1000, "n_permutations": 199}


def _zero_in(iv):
    return iv["ci_low"] <= 0 <= iv["ci_high"]


@pytest.fixture(scope="module")
def demo_metrics(demo_atlas, compute):
    return compute(demo_atlas, **OPTIONS)


@pytest.mark.slow
def test_random_init_demo_survives_no_control(demo_metrics):
    assert set(demo_metrics["random_init_models"]) == {"tiny-deepseek-v3", "tiny-deepseek-v3-seed1"}
    sp = demo_metrics["models"]["tiny-deepseek-v3"]["sense_pairs"]
    assert set(sp["controls"]) == {
        "context_words",
        "token_identity",
        "position",
        "neighbours",
        "null_model",
        "all",
    }
    assert sp["controls"]["null_model"]["null_model"] == "tiny-deepseek-v3-seed1"
    assert sp["layer_mean"]["delta"]["ci_low"] > 0  # the raw effect a random-init model shows
    for name in ("token_identity", "null_model", "all"):
        assert _zero_in(sp["controls"][name]["layer_mean"]["delta"]), name
        assert len(sp["controls"][name]["delta"]["estimate"]) == 5
    assert "token_identity" in sp["survives"]["removed_by"]
    assert sp["survives"]["layers"] == [] and sp["survives"]["layer_mean_survives"] is False


@pytest.fixture(scope="module")
def calibration(demo_atlas, tmp_path_factory, hf_cache):
    out = tmp_path_factory.mktemp("calibration") / "out"
    report = calibrate(
        demo_atlas,
        out,
        plant_options=PlantOptions(layers=(2, 4), strength=0.5, seed=0),
        metrics_options=MetricsOptions(**OPTIONS),
        cache_dir=hf_cache,
    )
    return out, report


@pytest.mark.slow
def test_planted_sense_effect_is_recovered_at_exactly_its_layers(calibration):
    _, report = calibration
    original, sense = report["original"], report["plants"]["sense"]
    moe_layers = [1, 2, 3, 4, 5]
    for i, layer in enumerate(moe_layers):
        raw_new, raw_old = sense["raw"]["delta"]["estimate"][i], original["raw"]["delta"]["estimate"][i]
        if layer in (2, 4):
            assert raw_new > raw_old + 0.05
            for name in (
                "raw",
                "context_words",
                "token_identity",
                "position",
                "neighbours",
                "null_model",
                "all",
            ):
                assert sense[name]["delta"]["ci_low"][i] > 0, (name, layer)
        else:
            assert raw_new == raw_old  # nothing planted there: not a digit changes
    assert sense["survives_layers"] == [2, 4]
    assert original["survives_layers"] == []


@pytest.mark.slow
def test_each_sense_blind_confound_is_removed_by_its_control(calibration):
    _, report = calibration
    for plant, control in (("token_identity", "token_identity"), ("context_words", "context_words")):
        block = report["plants"][plant]
        assert _zero_in(block[control]["layer_mean"]), plant
        delta = block[control]["delta"]
        assert all(lo <= 0 <= hi for lo, hi in zip(delta["ci_low"], delta["ci_high"], strict=True)), plant
        assert block["survives_layers"] == []
    # Sense-blind routing by token identity still shows a raw effect: the raw number alone would mislead.
    assert report["plants"]["token_identity"]["raw"]["layer_mean"]["ci_low"] > 0


@pytest.mark.slow
def test_noise_null_cis_contain_zero(calibration):
    _, report = calibration
    noise = report["plants"]["noise"]
    for name in ("raw", "context_words", "token_identity", "null_model", "all"):
        assert _zero_in(noise[name]["layer_mean"]), name
    assert all(block["passed"] for block in report["plants"].values())


@pytest.mark.slow
def test_calibration_writes_atlases_that_pass_the_integrity_check(calibration, demo_atlas):
    out, report = calibration
    written = json.loads((out / "calibration.json").read_text())
    assert written["model"] == "tiny-deepseek-v3"
    summary = written["summary"]
    assert (
        summary["manifest_sha256"] == hashlib.sha256((demo_atlas / "manifest.json").read_bytes()).hexdigest()
    )
    # At the demo's size every confound is strong enough to test and handled by its control and `all`.
    for name, confound in summary["matrix"]["confounds"].items():
        assert confound["raw_ci_above_0"], name
        assert confound["passed"], name
    assert "Plant × control" in (out / "calibration.md").read_text()
    assert "| sense |" in (out / "calibration.md").read_text()
    manifest = json.loads((out / "plant-noise" / "manifest.json").read_text())
    assert manifest["builds"][-1]["kind"] == "calibration-plant"


@pytest.mark.slow
def test_calibrate_cli_refuses_a_non_empty_out(demo_atlas, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = CliRunner().invoke(command, ["calibrate", str(demo_atlas), "--out", str(tmp_path / "busy")])
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output
    assert "Traceback" not in result.output


# ---- the in-memory calibration on a small SYNTHETIC atlas ---------------------------------------------

N_EXPERTS, N_LAYERS, TOP_K = 16, 4, 4


def _varied_senses() -> pa.Table:
    """60 lemmas x 2 senses x 5 examples whose texts vary (number of leading words, context words, the
    target's inflection), so that positions, neighbours and context words differ between examples."""
    from atlas_build.atlas.schema import SENSES_SCHEMA

    rng = np.random.default_rng(4)
    rows = []
    for lemma in range(60):
        name = f"lem{lemma}"
        for sense in range(2):
            for example in range(5):
                form = name + ("s" if rng.random() < 0.3 else "")
                lead = [f"w{x}" for x in rng.integers(0, 40, rng.integers(0, 5))]
                tail = [f"w{x}" for x in rng.integers(0, 40, 3)]
                head = " ".join(lead)
                text = " ".join([*lead, form, *tail])
                start = len(head) + (1 if lead else 0)
                rows.append(
                    {
                        "example_id": f"{name}.n|{name}.n.0{sense + 1}|{example}",
                        "lemma": name,
                        "pos": "n",
                        "synset": f"{name}.n.0{sense + 1}",
                        "sense_key": f"{name}%1:00:0{sense}::",
                        "sense_number": sense + 1,
                        "lemma_n_senses": 2,
                        "lexname": "noun.artifact",
                        "gloss": "synthetic",
                        "text": text,
                        "target_start": start,
                        "target_end": start + len(form),
                        "target_form": form,
                        "source": "synthetic",
                    }
                )
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


@pytest.fixture(scope="module")
def varied_atlas(tmp_path_factory):
    from tests.metrics.metrics_synth import model_row, random_fn, write_atlas

    row = model_row("model", random_init=False, n_experts=N_EXPERTS, n_layers=N_LAYERS, top_k=TOP_K)
    return write_atlas(
        tmp_path_factory.mktemp("calib") / "atlas",
        _varied_senses(),
        [(row, random_fn(N_EXPERTS, N_LAYERS, TOP_K))],
        seed=5,
    )


@pytest.fixture(scope="module")
def planter(varied_atlas, hf_cache):
    from atlas_build.metrics.compute import calibration_planter
    from atlas_build.metrics.estimators.identity import target_identity
    from atlas_build.metrics.estimators.senses import load_sense_corpus
    from atlas_build.metrics.provenance.source import AtlasSource

    src = AtlasSource(varied_atlas, cache_dir=hf_cache)
    row = src.models()[0]
    corpus = load_sense_corpus(src.table("senses"), src.table("sense-pairs"))
    routing = src.routing("model")
    return calibration_planter(
        corpus, target_identity(routing, corpus.example_ids, corpus.form), routing, row, 0
    )


def test_planted_kappa_is_chance_corrected_set_overlap(planter):
    sets = planter.sets(0, "token_identity", np.array([False, True, False, True]), 0.5, 0.7)
    kappa = planter.kappa(sets)
    k, n = TOP_K, N_EXPERTS
    chance = k * k / n
    corpus = planter.corpus
    for p in range(0, len(corpus.pair_a), 37):
        a, b = corpus.pair_a[p], corpus.pair_b[p]
        for layer in range(N_LAYERS):
            overlap = len(set(sets[a, layer].tolist()) & set(sets[b, layer].tolist()))
            assert kappa[p, layer] == pytest.approx((overlap - chance) / (k - chance), abs=1e-12)
    # Each top-k set is k distinct experts.
    assert all(len(set(s)) == k for s in sets.reshape(-1, k)[::101].tolist())


def test_sense_specific_phrasing_copies_the_donor_features(planter):
    from atlas_build.metrics.estimators.senses import context_jaccard

    corpus, ident = planter.corpus, planter.identity
    assert planter.phrased("position", 0.0) is planter
    for confound, fields in (("neighbour_2", ("left2", "left")), ("position", ("position",))):
        phrased = planter.phrased(confound, 1.0)
        for field in fields:
            values = getattr(phrased.identity, field)
            # ρ = 1: every routed example of a synset carries one donor's value, a value its synset had.
            for synset in np.unique(corpus.synset)[:20]:
                members = np.flatnonzero((corpus.synset == synset) & (ident.n_ids > 0))
                assert len(set(values[members].tolist())) == 1
                assert values[members[0]] in set(getattr(ident, field)[members].tolist())
        untouched = [f for f in ("left", "right", "position", "left2") if f not in fields]
        for field in untouched:
            np.testing.assert_array_equal(getattr(phrased.identity, field), getattr(ident, field))
    # Context words: the copied word sets give the Jaccard the context_words control then reads.
    phrased = planter.phrased("context_words", 0.5)
    words = phrased.corpus.words

    def word_set(words, e):
        codes = words.codes[words.offset[e] : words.offset[e] + words.size[e]]
        return set((codes % words.vocab).tolist())

    originals = [word_set(corpus.words, e) for e in range(len(corpus.group))]
    for p in range(0, len(corpus.pair_a), 53):
        a, b = word_set(words, corpus.pair_a[p]), word_set(words, corpus.pair_b[p])
        union = a | b
        expected = len(a & b) / len(union) if union else 0.0
        assert phrased.corpus.jaccard[p] == pytest.approx(expected, abs=1e-12)
        assert a in originals and b in originals
    assert not np.array_equal(phrased.corpus.jaccard, corpus.jaccard)
    np.testing.assert_allclose(
        context_jaccard(words, corpus.pair_a, corpus.pair_b), phrased.corpus.jaccard, atol=1e-12
    )


@pytest.fixture(scope="module")
def summary(planter):
    from atlas_build.metrics.calibration.matrix import CalibrationOptions, calibration_summary

    options = CalibrationOptions(seeds=12, n_resamples=150, power_strengths=(0.1, 0.3, 0.6), phrasing=0.4)
    return calibration_summary(planter, options, [1, 2, 3, 4], model="model", manifest_sha256="abc")


def test_matrix_recovers_the_planted_truth(summary):
    confounds = summary["matrix"]["confounds"]
    # A keyed confound: strong raw, removed by its control and `all`, the sense effect kept; a control
    # that does not see the feature leaves it (under-corrects).
    ti = confounds["token_identity"]
    assert ti["raw_ci_above_0"] and ti["raw_strength_in_half_widths"] > 2
    assert ti["cells"]["token_identity"]["removes"] and ti["cells"]["token_identity"]["keeps"]
    assert ti["cells"]["all"]["removes"] and ti["passed"]
    assert ti["cells"]["raw"]["under_corrects_layer_mean"]
    assert ti["cells"]["position"]["under_corrects_layer_mean"]
    cw = confounds["context_words"]
    assert cw["raw_ci_above_0"] and cw["cells"]["context_words"]["removes"]
    assert cw["cells"]["token_identity"]["under_corrects_layer_mean"]
    # The sense effect is planted at layers 2 and 4 only: every control keeps it there.
    assert summary["matrix"]["sense_layers"] == [2, 4]
    assert all(block["keeps"] for block in summary["matrix"]["sense_only"].values())
    truth = np.asarray(summary["matrix"]["truth"])
    assert truth[0] == truth[2] == 0 and truth[1] > 0.15 and truth[3] > 0.15
    assert summary["manifest_sha256"] == "abc" and summary["n_pairs"] == 60 * 40


def test_a_confound_this_corpus_cannot_show_is_flagged_untestable(planter):
    """In a corpus where every target is the first token, routing that follows the position is the same for
    every pair: nothing shows raw, and the check says it could not test the control instead of passing."""
    from dataclasses import replace

    from atlas_build.metrics.calibration.matrix import CalibrationOptions, plant_matrix

    identity = replace(planter.identity, position=np.zeros_like(planter.identity.position))
    flat = replace(planter, identity=identity, _codes={})
    out = plant_matrix(flat, CalibrationOptions(n_resamples=100, phrasing=0.0), [1, 2, 3, 4])
    position = out["confounds"]["position"]
    assert not position["raw_ci_above_0"] and not position["passed"]


def test_false_positive_rates_recount_and_sit_at_the_nominal_level(planter, summary):
    from atlas_build.metrics.estimators.senses import BootstrapOptions, compare_groups

    fpr = summary["false_positive_rate"]
    assert fpr["nominal"] == pytest.approx(0.05) and fpr["n_replicates"] == 12
    # Recount the raw row: the same noise replicates, compare_groups called here.
    corpus = planter.corpus
    hits = np.zeros(N_LAYERS)
    for r in range(12):
        kappa = planter.kappa(planter.sets(1000 + r, None, None, 0.0, 0.0))
        valid = np.isfinite(kappa).all(axis=1)
        raw = compare_groups(
            kappa[valid],
            corpus.pair_same[valid],
            corpus.pair_group[valid],
            corpus.n_groups,
            BootstrapOptions(150, 0, 0.95, 0),
        )["delta"]
        hits += (np.asarray(raw["ci_low"]) > 0) | (np.asarray(raw["ci_high"]) < 0)
    np.testing.assert_allclose(fpr["controls"]["raw"]["per_layer"], hits / 12)
    # Pure noise: pooled over layers and controls, the rate is near its nominal level.
    pooled = np.mean([np.mean(c["per_layer"]) for c in fpr["controls"].values()])
    assert pooled <= 0.15
    assert set(fpr["controls"]) == {
        "raw",
        "context_words",
        "token_identity",
        "position",
        "neighbours",
        "null_model",
        "all",
    }


def test_power_is_the_smallest_detected_strength_with_its_planted_delta(planter, summary):
    power = summary["power"]
    assert power["strengths"] == [0.1, 0.3, 0.6]
    effect = np.asarray(power["delta_kappa"])
    corpus = planter.corpus
    for j, q in enumerate(power["strengths"]):
        kappa = planter.kappa(planter.sets(2000 + j, None, np.ones(N_LAYERS, bool), q, 0.0))
        valid = np.isfinite(kappa).all(axis=1)
        same = corpus.pair_same[valid]
        # Δκ as a plain difference of means, float64.
        delta = kappa[valid][same].mean(axis=0) - kappa[valid][~same].mean(axis=0)
        np.testing.assert_allclose(effect[j], delta, atol=1e-12)
    assert (effect[2] > effect[0]).all()  # a stronger plant, a larger effect
    for name, c in power["controls"].items():
        # q_s = 0.6 (Δκ ≈ 0.36) is detected by every control at every layer.
        assert all(q is not None and q <= 0.6 for q in c["min_strength"]), name
        for i, q in enumerate(c["min_strength"]):
            assert c["min_delta_kappa"][i] == pytest.approx(effect[power["strengths"].index(q), i])


def test_atlas_metrics_records_the_calibration_tied_to_its_manifest(varied_atlas, compute):
    metrics = compute(
        varied_atlas,
        n_bootstrap=200,
        n_permutations=99,
        calibrate=True,
        calibration_seeds=3,
        calibration_resamples=60,
    )
    calibration = metrics["calibration"]
    sha = hashlib.sha256((varied_atlas / "manifest.json").read_bytes()).hexdigest()
    assert calibration["manifest_sha256"] == sha == metrics["provenance"]["manifest_sha256"]
    assert calibration["model"] == "model" and calibration["options"]["seeds"] == 3
    assert set(calibration["matrix"]["confounds"]) == {
        "token_identity",
        "neighbours",
        "position",
        "neighbour_2",
        "frequency",
        "context_words",
    }
    assert all(math.isfinite(v) for v in calibration["false_positive_rate"]["controls"]["all"]["per_layer"])
    # The card's summary says it, and the share each control explains is in the sense-pair block.
    from atlas_build.metrics.report.markdown import summarize

    assert "Calibration of the controls on planted truth" in summarize(metrics)
    explained = metrics["models"]["model"]["sense_pairs"]["explained"]
    raw = metrics["models"]["model"]["sense_pairs"]["layer_mean"]["delta"]["estimate"]
    control = metrics["models"]["model"]["sense_pairs"]["controls"]["position"]["layer_mean"]["delta"][
        "estimate"
    ]
    assert explained["share_removed"]["position"] == pytest.approx((raw - control) / raw, rel=1e-4)
