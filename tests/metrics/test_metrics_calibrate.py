"""On the demo-sized atlas (RANDOM-INIT): the controls remove the random-init model's raw effect, the
null-model control checks itself (≈ 0 against the twin), and calibration on planted truth recovers a
planted sense effect at exactly its layers and removes each sense-blind confound with its own control."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atlas_build.commands.metrics import command
from atlas_build.metrics import MetricsOptions
from atlas_build.metrics.calibration.plants import PlantOptions, calibrate

pytestmark = pytest.mark.slow
OPTIONS = {"n_bootstrap": 1000, "n_permutations": 199}


def _zero_in(iv):
    return iv["ci_low"] <= 0 <= iv["ci_high"]


@pytest.fixture(scope="module")
def demo_metrics(demo_atlas, compute):
    return compute(demo_atlas, **OPTIONS)


def test_random_init_demo_survives_no_control(demo_metrics):
    assert set(demo_metrics["random_init_models"]) == {"tiny-deepseek-v3", "tiny-deepseek-v3-seed1"}
    sp = demo_metrics["models"]["tiny-deepseek-v3"]["sense_pairs"]
    assert set(sp["controls"]) == {"context_words", "token_identity", "null_model", "all"}
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


def test_planted_sense_effect_is_recovered_at_exactly_its_layers(calibration):
    _, report = calibration
    original, sense = report["original"], report["plants"]["sense"]
    moe_layers = [1, 2, 3, 4, 5]
    for i, layer in enumerate(moe_layers):
        raw_new, raw_old = sense["raw"]["delta"]["estimate"][i], original["raw"]["delta"]["estimate"][i]
        if layer in (2, 4):
            assert raw_new > raw_old + 0.05
            for name in ("raw", "context_words", "token_identity", "null_model", "all"):
                assert sense[name]["delta"]["ci_low"][i] > 0, (name, layer)
        else:
            assert raw_new == raw_old  # nothing planted there: not a digit changes
    assert sense["survives_layers"] == [2, 4]
    assert original["survives_layers"] == []


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


def test_noise_null_cis_contain_zero(calibration):
    _, report = calibration
    noise = report["plants"]["noise"]
    for name in ("raw", "context_words", "token_identity", "null_model", "all"):
        assert _zero_in(noise[name]["layer_mean"]), name
    assert all(block["passed"] for block in report["plants"].values())


def test_calibration_writes_atlases_that_pass_the_integrity_check(calibration):
    out, report = calibration
    assert json.loads((out / "calibration.json").read_text())["model"] == "tiny-deepseek-v3"
    assert "| sense |" in (out / "calibration.md").read_text()
    manifest = json.loads((out / "plant-noise" / "manifest.json").read_text())
    assert manifest["builds"][-1]["kind"] == "calibration-plant"


def test_calibrate_cli_refuses_a_non_empty_out(demo_atlas, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = CliRunner().invoke(command, ["calibrate", str(demo_atlas), "--out", str(tmp_path / "busy")])
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output
    assert "Traceback" not in result.output
