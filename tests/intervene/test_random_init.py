"""The random-init demo: every hypothesis `atlas intervene plan` proposes from the RANDOM-INIT tiny-deepseek-v3
atlas is reported as not surviving (a null model), with enough baseline draws that it could have."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.store import read_config
from atlas_build.cli import main

DRAWS = 49  # 1 / (draws + 1) = 0.02 <= 0.05 / 2: a hypothesis could survive, so "none does" means something


def test_no_proposed_hypothesis_survives_on_the_random_init_model(small_atlas, tmp_path):
    atlas = tmp_path / "atlas"
    shutil.copytree(small_atlas, atlas)
    plan = tmp_path / "plan.json"
    args = ["intervene", "plan", str(atlas), "--out", str(plan), "--layers", "3"]
    result = CliRunner().invoke(main, [*args, "--draws", str(DRAWS), "--max-texts", "20"])
    assert result.exit_code == 0, result.output
    hypotheses = json.loads(plan.read_text())["hypotheses"]
    assert [h["id"] for h in hypotheses] == ["selective-L3", "separating-L3"]
    result = CliRunner().invoke(main, ["intervene", str(atlas), "--plan", str(plan), "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    assert "RANDOM-INIT" in result.output and "verdict: 0 of 2 hypotheses" in result.output
    rows = read_config(atlas, Manifest.load(atlas), "interventions").to_pylist()
    assert {r["hypothesis_id"] for r in rows} == {"selective-L3", "separating-L3"}
    assert all(r["random_init"] and not r["hypothesis_survives"] for r in rows)
    primary = [r for r in rows if r["primary"]]
    assert len(primary) == 2 and all(1 / (r["baseline_draws"] + 1) <= r["alpha"] for r in primary)
    assert all(0 < r["n_texts"] <= 20 for r in primary)  # the sampled texts that have the outcome
    assert "random-init: a null model, where none should survive" in (atlas / "README.md").read_text()

    # The explorer's model page carries the same rows (what its "Causal tests" table shows).
    site = tmp_path / "site"
    result = CliRunner().invoke(main, ["explore", str(atlas), "--out", str(site)])
    assert result.exit_code == 0, result.output
    text = (site / "data" / "models" / "tiny-deepseek-v3.js").read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    rest = text.partition("(")[2]
    _, end = decoder.raw_decode(rest)
    page, _ = decoder.raw_decode(rest, end + 1)
    shown = {(r["hypothesis_id"], r["outcome"]): r["effect"] for r in page["interventions"]}
    assert shown == {(r["hypothesis_id"], r["outcome"]): r["effect"] for r in rows}
