"""`atlas intervene` on a planted-causal checkpoint: the decisive expert is found (CI below 0, beyond every
load-matched random draw), the only-frequent expert is not; bad inputs get one line and change nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.store import read_config
from atlas_build.cli import main

from .planted import FREQUENT, LAYER, PLANTED, build_planted, write_probe

DRAWS = 79  # p can reach 1/80 < 0.05 / 3 (three hypothesis x intervention tests in the plan)


def plan_of(name="planted", **changes) -> dict:
    plan = {
        "name": name,
        "seed": 0,
        "baseline_draws": DRAWS,
        "bootstrap": 400,
        "alpha": 0.05,
        "hypotheses": [
            {
                "id": "planted",
                "claim": "expert 5 at layer 1 carries the river sense of bank",
                "layer": LAYER,
                "experts": [PLANTED],
                "lemma": "bank",
                "sense": "bank%river",
                "interventions": ["ablate", "transplant"],
                "primary_outcome": "next_token_logprob",
            },
            {
                "id": "frequent",
                "claim": "the most frequently routed expert at layer 1 carries it",
                "layer": LAYER,
                "experts": [FREQUENT],
                "lemma": "bank",
                "sense": "bank%river",
            },
        ],
    }
    plan.update(changes)
    return plan


def write_plan(path, plan: dict):
    path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(checkpoint, atlas) of the planted model, the atlas built by `atlas build --corpus jsonl`. Read-only."""
    from atlas_build.builder import BuildConfig, run_build

    tmp = tmp_path_factory.mktemp("planted")
    checkpoint = build_planted(tmp / "planted-mixtral")
    probe = write_probe(tmp / "probe.jsonl")
    atlas = tmp / "atlas"
    run_build(
        BuildConfig(model=str(checkpoint), out=atlas, corpus="jsonl", texts=str(probe), progress=False),
        log=lambda *_: None,
    )
    return checkpoint, atlas


@pytest.fixture(scope="module")
def recorded(planted, tmp_path_factory):
    """A copy of the planted atlas with the plan run and recorded: (atlas, plan file, CLI output)."""
    checkpoint, atlas = planted
    tmp = tmp_path_factory.mktemp("recorded")
    copy = tmp / "atlas"
    shutil.copytree(atlas, copy)
    plan = write_plan(tmp / "plan.json", plan_of())
    result = CliRunner().invoke(
        main,
        ["intervene", str(copy), "--plan", str(plan), "--model", str(checkpoint), "--out", str(tmp / "out")],
    )
    assert result.exit_code == 0, result.output
    return copy, plan, result.output


def rows_of(atlas) -> list[dict]:
    return read_config(atlas, Manifest.load(atlas), "interventions").to_pylist()


def test_the_planted_expert_is_found(recorded):
    atlas, plan, output = recorded
    rows = rows_of(atlas)
    found = next(
        r for r in rows if r["hypothesis_id"] == "planted" and r["intervention"] == "ablate" and r["primary"]
    )
    assert found["outcome"] == "next_token_logprob" and found["ablation"] == "reroute"
    assert found["ci_high"] < 0 and found["effect"] < -1.0  # the next token was near-certain with the expert
    assert found["p_value"] == pytest.approx(1 / (DRAWS + 1)) and found["p_value"] <= found["alpha"]
    assert found["survives"] and found["hypothesis_survives"]
    assert found["alpha"] == pytest.approx(0.05 / 3) and found["baseline_draws"] == DRAWS
    assert found["cluster_unit"] == "text" and found["n_texts"] == 10
    assert found["plan_sha256"] and found["model_id"] == "planted-mixtral" and not found["random_init"]
    assert "planted: SURVIVES" in output and "verdict: 1 of 2 hypotheses" in output


def test_the_only_frequent_expert_is_not(recorded):
    atlas, _, output = recorded
    rows = [r for r in rows_of(atlas) if r["hypothesis_id"] == "frequent"]
    primary = next(r for r in rows if r["primary"])
    assert not primary["hypothesis_survives"] and not primary["survives"]
    # It is the most loaded expert of the layer (chosen at every token), the planted one is not.
    planted_row = next(r for r in rows_of(atlas) if r["hypothesis_id"] == "planted")
    assert primary["hypothesis_load"] > 0.9 > planted_row["hypothesis_load"]
    assert "frequent: does not survive" in output


def test_transplanting_the_recorded_routing_of_the_same_set_changes_nothing(recorded):
    """In the planted model both senses of `bank` are routed to {F, E} at layer 1: transplanting the money
    sense's recorded set into the river texts is the identity, while random sets (which lose E) hurt."""
    atlas, _, _ = recorded
    row = next(
        r
        for r in rows_of(atlas)
        if r["intervention"] == "transplant" and r["outcome"] == "next_token_logprob"
    )
    assert sorted(row["forced_experts"]) == sorted([FREQUENT, PLANTED]) and row["donor_sense"] == "bank%money"
    assert abs(row["effect"]) < 1e-4 and row["baseline_mean"] < -1.0 and not row["survives"]


def test_every_outcome_is_recorded_with_its_provenance(recorded, planted):
    atlas, plan, _ = recorded
    rows = rows_of(atlas)
    import hashlib

    assert {r["plan_sha256"] for r in rows} == {hashlib.sha256(plan.read_bytes()).hexdigest()}
    outcomes = {(r["hypothesis_id"], r["intervention"], r["outcome"]) for r in rows}
    assert ("planted", "ablate", "downstream_identical") not in outcomes  # layer 1 is the last MoE layer
    assert {"next_token_logprob", "target_logprob", "sense_probe"} <= {o for _, _, o in outcomes}
    assert len(rows) == len(outcomes)
    assert all(r["engine"] == "hf" and r["device"] == "cpu" and r["code_version"] for r in rows)
    assert "interventions" in Manifest.load(atlas).configs()
    out = json.loads((plan.parent / "out" / "interventions-planted.json").read_text())
    assert len(out) == len(rows)


def test_the_statistics_are_the_ones_written_here(recorded):
    """effect, CI bounds and p recomputed from the stored baseline: p = (1 + #draws <= effect) / (1 + draws)."""
    from atlas_build.intervene.outcomes import cluster_bootstrap, summarise

    rng = np.random.default_rng(5)
    values = rng.normal(-1.0, 0.5, size=30)
    lemmas = [f"l{i % 6}" for i in range(30)]
    baseline = rng.normal(0.0, 0.3, size=(19, 30))
    stats = summarise("x", values, baseline, lemmas, 2000, 0.05, np.random.default_rng(1))
    assert stats.cluster_unit == "lemma" and stats.n_clusters == 6
    assert stats.effect == pytest.approx(values.mean())
    draws = baseline.mean(axis=1)
    assert stats.p_value == pytest.approx((1 + (draws <= values.mean()).sum()) / 20)
    # The bootstrap, as a loop over resamples of whole lemmas.
    loop_rng = np.random.default_rng(1)
    groups = sorted(set(lemmas))
    picks = loop_rng.integers(0, len(groups), size=(2000, len(groups)))
    means = []
    for row in picks:
        chosen = [values[i] for g in row for i in range(30) if lemmas[i] == groups[g]]
        means.append(np.mean(chosen))
    assert stats.ci_low == pytest.approx(np.quantile(means, 0.025))
    assert stats.ci_high == pytest.approx(np.quantile(means, 0.975))
    low, high = cluster_bootstrap(values, np.arange(30), 500, np.random.default_rng(2))
    assert low < values.mean() < high


# ---- bad inputs: one line, exit 2, nothing written ----------------------------------------------------------
def _files(root):
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".lock" not in p.name
    }


def _refused(args, root, expect: str):
    before = _files(root)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("Loading")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.output
    assert "Traceback" not in result.output
    assert _files(root) == before


@pytest.mark.parametrize(
    ("hypothesis", "expect"),
    [
        ({"layer": 7}, "layer 7 is not an MoE layer"),
        ({"experts": [8]}, "expert(s) [8] do not exist"),
        ({"sense": "bank%sky"}, "no texts of sense 'bank%sky'"),
        ({"lemma": "spring"}, "no labelled texts of lemma 'spring'"),
    ],
)
def test_a_plan_naming_what_the_model_lacks_is_refused(planted, tmp_path, hypothesis, expect):
    checkpoint, atlas = planted
    plan = plan_of()
    plan["hypotheses"][0].update(hypothesis)
    path = write_plan(tmp_path / "plan.json", plan)
    _refused(["intervene", str(atlas), "--plan", str(path), "--model", str(checkpoint)], atlas, expect)


def test_an_atlas_without_its_model_is_refused(planted, tmp_path):
    _, atlas = planted
    path = write_plan(tmp_path / "plan.json", plan_of())
    # The atlas records `planted-mixtral`, a folder name, not a checkpoint one can load.
    _refused(["intervene", str(atlas), "--plan", str(path)], atlas, "pass --model with the checkpoint")
    empty = tmp_path / "empty"
    shutil.copytree(atlas, empty)
    manifest = Manifest.load(empty)
    for config in [c for c in manifest.configs() if c.startswith("routing-") or c == "models"]:
        manifest.drop_config(config)
    manifest.save(empty)
    _refused(["intervene", str(empty), "--plan", str(path)], empty, "has no routed model")


def test_a_plan_edited_after_its_results_were_recorded_is_refused(recorded, planted):
    checkpoint, _ = planted
    atlas, plan, _ = recorded
    edited = plan.parent / "edited.json"
    write_plan(edited, plan_of(baseline_draws=9))
    _refused(
        ["intervene", str(atlas), "--plan", str(edited), "--model", str(checkpoint)], atlas, "edited after"
    )


def test_a_checkpoint_of_another_hash_is_refused(planted, tmp_path):
    _, atlas = planted
    other = build_planted(tmp_path / "other", seed=1)
    path = write_plan(tmp_path / "plan.json", plan_of())
    _refused(
        ["intervene", str(atlas), "--plan", str(path), "--model", str(other)], atlas, "not the atlas's model"
    )


def test_plan_proposes_from_the_atlas_and_refuses_to_overwrite(planted, tmp_path):
    _, atlas = planted
    out = tmp_path / "proposed.json"
    result = CliRunner().invoke(main, ["intervene", "plan", str(atlas), "--out", str(out)])
    assert result.exit_code == 0, result.output
    proposed = json.loads(out.read_text())
    assert proposed["name"] == "proposed" and proposed["hypotheses"]
    assert {h["layer"] for h in proposed["hypotheses"]} == {0, 1}
    selective = next(h for h in proposed["hypotheses"] if h["id"] == "selective-L1")
    assert selective["experts"] and all(0 <= e < 8 for e in selective["experts"])
    _refused(["intervene", "plan", str(atlas), "--out", str(out)], atlas, "never overwritten")


def test_the_record_validates_and_is_on_the_card(recorded, planted, tmp_path):
    import pyarrow.parquet as pq

    from validation import run_validation

    def statuses(report, config):
        return {r.check: r.status for r in report.results if r.config == config}

    atlas, _, _ = recorded
    checkpoint, _ = planted
    # A local checkpoint's tokenizer is given as a local directory (the atlas names it by its portable id).
    report = run_validation(atlas, tokenizer_dirs={None: checkpoint})
    failed = [(r.config, r.check) for r in report.results if r.status == "failed"]
    # The planted model's frequent expert is chosen at every token of layer 1, on purpose.
    assert failed == [("routing-planted-mixtral", "routing-not-degenerate")], failed
    assert statuses(report, "interventions")["interventions-records"] == "passed"
    card = (atlas / "README.md").read_text(encoding="utf-8")
    assert (
        "Interventions (`atlas intervene`, plan `planted`" in card
        and "1 of 2 hypotheses survive (`planted`)" in card
    )

    bad = tmp_path / "bad"
    shutil.copytree(atlas, bad)
    (path,) = sorted((bad / "interventions").glob("*.parquet"))
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["hypothesis_id"] == "frequent" and row["primary"]:
            row["survives"] = True  # its CI and p say otherwise
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    report = run_validation(bad, hashes=False, tokenizers=False)
    assert statuses(report, "interventions")["interventions-records"] == "failed"
