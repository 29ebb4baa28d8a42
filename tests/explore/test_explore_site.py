"""`atlas explore` without a browser: the data files against the atlas's own rows, bad input, the arrows."""

from __future__ import annotations

import ast
import base64
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner
from explore_helpers import MODEL_SLUG, TWIN_SLUG, parquet_targets, read_data_file

from atlas_build.cli import main
from atlas_build.explore.site import MARKER


def _senses(root: Path):
    return pq.read_table(root / "senses").to_pylist()


def test_index_counts_every_lemma_of_the_senses_config(site, twin_atlas):
    _, index = read_data_file(site / "data" / "index.js")
    senses = _senses(twin_atlas)
    examples = Counter(f"{r['lemma']}.{r['pos']}" for r in senses)
    synsets = {key: {r["synset"] for r in senses if f"{r['lemma']}.{r['pos']}" == key} for key in examples}
    pairs = pq.read_table(twin_atlas / "sense-pairs").to_pylist()
    same = Counter(f"{p['lemma']}.{p['pos']}" for p in pairs if p["same_sense"])
    different = Counter(f"{p['lemma']}.{p['pos']}" for p in pairs if not p["same_sense"])
    lemmas = index["lemmas"]
    assert lemmas["key"] == sorted(examples, key=lambda k: (k.rsplit(".", 1)[0], k.rsplit(".", 1)[1]))
    for i, key in enumerate(lemmas["key"]):
        assert lemmas["examples"][i] == examples[key]
        assert lemmas["senses"][i] == len(synsets[key])
        assert (lemmas["same"][i], lemmas["different"][i]) == (same[key], different[key])
    models = {m["slug"]: m for m in index["models"]}
    assert set(models) == {MODEL_SLUG, TWIN_SLUG}
    assert models[MODEL_SLUG]["twins"] == [TWIN_SLUG] and models[TWIN_SLUG]["twins"] == [MODEL_SLUG]
    assert all(m["random_init"] for m in models.values())  # tiny-deepseek-v3 is RANDOM-INIT, both of them


def test_lemma_files_hold_the_parquet_routing_of_every_target_token(site, twin_atlas):
    _, index = read_data_file(site / "data" / "index.js")
    for slug in (MODEL_SLUG, TWIN_SLUG):
        expected = parquet_targets(twin_atlas, slug)
        seen = 0
        for i, key in enumerate(index["lemmas"]["key"]):
            file_key, data = read_data_file(site / "data" / "lemmas" / f"{i:05d}.js")
            assert file_key == key
            routing = data["routing"][slug]
            experts = np.frombuffer(base64.b64decode(routing["experts"]), dtype=np.uint8).reshape(-1, 5, 8)
            weights = np.frombuffer(base64.b64decode(routing["weights"]), dtype="<f2").reshape(-1, 5, 8)
            assert len(experts) == routing["rows"] == len(routing["example"])
            for row, (ex, token_index) in enumerate(
                zip(routing["example"], routing["token_index"], strict=True)
            ):
                example_id = data["examples"][ex]["id"]
                match = [r for r in expected[example_id] if r["token_index"] == token_index]
                assert len(match) == 1
                np.testing.assert_array_equal(experts[row], match[0]["experts"])
                np.testing.assert_array_equal(weights[row].astype(np.float32), match[0]["weights"])
                assert routing["token"][row] == match[0]["token"]
                seen += 1
        assert seen == sum(len(rows) for rows in expected.values())


def test_lemma_file_groups_examples_by_sense_with_gloss_and_key(site, twin_atlas):
    senses = _senses(twin_atlas)
    _, index = read_data_file(site / "data" / "index.js")
    key = index["lemmas"]["key"][0]
    _, data = read_data_file(site / "data" / "lemmas" / "00000.js")
    rows = [r for r in senses if f"{r['lemma']}.{r['pos']}" == key]
    by_synset = {r["synset"]: r for r in rows}
    assert [s["sense_number"] for s in data["senses"]] == sorted({r["sense_number"] for r in rows})
    for sense in data["senses"]:
        source = by_synset[sense["synset"]]
        assert (sense["gloss"], sense["sense_key"]) == (source["gloss"], source["sense_key"])
        ids = [data["examples"][e]["id"] for e in sense["examples"]]
        assert ids == [r["example_id"] for r in rows if r["synset"] == sense["synset"]]
        for e in sense["examples"]:
            ex = data["examples"][e]
            row = next(r for r in rows if r["example_id"] == ex["id"])
            assert ex["text"][ex["target"][0] : ex["target"][1]] == row["target_form"]


def test_model_pages_carry_metrics_and_coactivation(site, twin_atlas):
    metrics = json.loads((twin_atlas / "metrics" / "metrics.json").read_text())
    for slug in (MODEL_SLUG, TWIN_SLUG):
        _, data = read_data_file(site / "data" / "models" / f"{slug}.js")
        assert (
            data["metrics"]["sense_pairs"]["layer_mean"]
            == metrics["models"][slug]["sense_pairs"]["layer_mean"]
        )
        assert data["coactivation_layers"] == list(range(5))
        npz = np.load(twin_atlas / "metrics" / f"coactivation-{slug}.npz")
        counts = npz["coactivation_counts"][2].astype(float)
        _, coact = read_data_file(site / "data" / "models" / slug / "coact-2.js")
        p = (
            np.frombuffer(base64.b64decode(coact["p"]), dtype="<u2").reshape(coact["n"], coact["n"])
            / coact["scale"]
        )
        i, j = np.unravel_index(np.argmax(counts - np.diag(np.diag(counts))), counts.shape)
        assert abs(p[i, j] - counts[i, j] / counts[i, i]) < 1e-4


def test_rerun_replaces_an_earlier_site(twin_atlas, tmp_path):
    out = tmp_path / "site"
    for _ in range(2):
        result = CliRunner().invoke(main, ["explore", str(twin_atlas), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert "index.html" in result.output and (out / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_refuses_a_folder_that_is_not_a_site_and_touches_nothing(twin_atlas, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["explore", str(twin_atlas), "--out", str(out)])
    assert result.exit_code == 2
    assert "not a site written by `atlas explore`" in result.output and "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_bad_inputs_are_one_line_errors(tmp_path, twin_atlas):
    not_atlas = tmp_path / "empty"
    not_atlas.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        (["explore", str(not_atlas), "--out", str(tmp_path / "s1")], "manifest.json does not exist"),
        (["explore", str(twin_atlas), "--out", str(a_file)], "is a file"),
        (
            ["explore", str(twin_atlas), "--out", str(tmp_path / "s2"), "--metrics", str(broken)],
            "not readable JSON",
        ),
        (
            [
                "explore",
                str(twin_atlas),
                "--out",
                str(tmp_path / "s3"),
                "--metrics",
                str(tmp_path / "none.json"),
            ],
            "does not exist",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in ("s1", "s2", "s3"))
    assert a_file.read_text() == "x"


def test_explorer_stands_on_the_atlas_alone():
    """The site is from the dataset alone: explore imports atlas_build.atlas / errors, nothing higher."""
    allowed = ("atlas_build.atlas", "atlas_build.errors", "atlas_build.explore")
    folder = Path(__file__).resolve().parents[2] / "atlas_build" / "explore"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("atlas_build") or name.split(".")[0] in ("validation", "dataset_cards"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
                assert name.split(".")[0] not in ("torch", "transformers", "vllm", "ray", "datasets"), name
