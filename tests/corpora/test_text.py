"""`atlas build --corpus text --texts FILE_OR_DATASET [--text-column COL]`: unlabelled texts -> `texts`.

Inputs: the JSONL fixture, and a `datasets` DatasetDict saved with `save_to_disk` in the test. The model is
RANDOM-INIT (tiny-deepseek-v3).
"""

from __future__ import annotations

import json

import datasets
import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.corpora.custom import CorpusInputError
from atlas_build.corpora.text import read

from .byo import FIXTURES, ROUTING, build, cli, failures, no_model, refused_cleanly, statuses, validate
from .byo import read as read_config

TEXTS = FIXTURES / "jsonl" / "texts.jsonl"


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict (train, test) with a `body` column and no id column, saved with save_to_disk."""
    path = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"body": ["One short line.", "Another short line."], "n": [1, 2]}
            ),
            "test": datasets.Dataset.from_dict({"body": ["A held-out line."], "n": [3]}),
        }
    ).save_to_disk(str(path))
    return path


def test_jsonl_texts_keep_ids_and_text():
    lines = [json.loads(line) for line in TEXTS.read_text().splitlines()]
    rows = read(TEXTS).tables["texts"].to_pylist()
    assert {r["text_id"]: r["text"] for r in rows} == {line["id"]: line["text"] for line in lines}


def test_saved_dataset_splits_and_column(saved, tmp_path):
    corpus = read(saved, text_column="body")
    rows = corpus.tables["texts"].to_pylist()
    assert {(r["text_id"], r["split"], r["text"]) for r in rows} == {
        ("train:000000", "train", "One short line."),
        ("train:000001", "train", "Another short line."),
        ("test:000000", "test", "A held-out line."),
    }
    # The fingerprint follows the data: another saved dataset with other text differs.
    assert corpus.fingerprint() == read(saved, text_column="body").fingerprint()
    other = tmp_path / "other"
    datasets.Dataset.from_dict({"body": ["One short line!"]}).save_to_disk(str(other))
    assert read(other, text_column="body").fingerprint() != corpus.fingerprint()


def test_bad_inputs_are_named(tmp_path, saved):
    with pytest.raises(CorpusInputError, match=r"\(split test\): no column 'text'; its columns are body, n"):
        read(saved)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": ""}\n')
    with pytest.raises(
        CorpusInputError, match=r"bad\.jsonl, line 2: field 'text' must be a non-empty string"
    ):
        read(bad)
    bad.write_text('{"id": 1, "body": "fine"}\n')
    with pytest.raises(
        CorpusInputError, match=r"bad\.jsonl, line 1: missing field 'text' \(the --text-column\)"
    ):
        read(bad)
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(CorpusInputError, match=r"line 2: duplicate id '1'"):
        read(bad)
    bad.write_text('{"id": 1, "text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(CorpusInputError, match=r"bad\.jsonl, line 1: nested too deeply"):
        read(bad)
    bad.write_text('{"id": 1, "text": "a", "text": "b"}\n')
    with pytest.raises(CorpusInputError, match=r"bad\.jsonl, line 1: key 'text' appears twice"):
        read(bad)
    empty_dir = tmp_path / "not-a-dataset"
    empty_dir.mkdir()
    with pytest.raises(CorpusInputError, match="not a dataset saved with `save_to_disk`"):
        read(empty_dir)


@pytest.fixture(scope="module")
def text_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "atlas"
    build(out, "text", texts=str(TEXTS))
    return out


def test_build_validate_and_resume_with_a_dataset(text_atlas, saved, tmp_path):
    assert Manifest.load(text_atlas).configs()["texts"]["rows"] == 4
    routing = read_config(text_atlas, ROUTING).to_pandas()
    assert set(routing.corpus) == {"texts"} and not routing.is_target.any()
    report = validate(text_atlas)
    assert report.passed, failures(report)
    assert statuses(report, "texts") == {
        "manifest-files": "passed",
        "schema": "passed",
        "ids-unique": "passed",
        "value-sets": "passed",
    }
    # A saved dataset through the CLI, with --text-column.
    out = tmp_path / "from-dataset"
    args = ["build", "--model", "tiny-deepseek-v3", "--corpus", "text", "--texts", str(saved)]
    result = cli(*args, "--text-column", "body", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert Manifest.load(out).configs()["texts"]["rows"] == 3


def test_bad_input_leaves_nothing_and_loads_no_model(tmp_path, saved, monkeypatch):
    no_model(monkeypatch)
    out = tmp_path / "out"
    args = [
        "build",
        "--model",
        "tiny-deepseek-v3",
        "--corpus",
        "text",
        "--texts",
        str(saved),
        "--out",
        str(out),
    ]
    refused_cleanly(cli(*args), "error:", "no column 'text'")
    refused_cleanly(cli(*args, "--text-column", "n"), "error:", "row 0: field 'n' must be a non-empty string")
    assert not out.exists()
    refused_cleanly(
        cli("build", "--model", "tiny-deepseek-v3", "--text-column", "x", "--out", str(out)),
        "--text-column is an option of --corpus text",
    )


def test_same_file_other_column_is_another_corpus(text_atlas, tmp_path):
    from atlas_build.errors import AtlasError

    from .byo import copy_atlas

    out = copy_atlas(text_atlas, tmp_path / "atlas")
    assert build(out, "text", texts=str(TEXTS)).shards_written == 0  # same file, same column: resumed
    with pytest.raises(AtlasError, match="already holds a text corpus"):
        build(out, "text", texts=str(TEXTS), text_column="id")


def test_metrics_count_the_texts_and_measure_no_sense(text_atlas):
    from .byo import MODEL, metrics_of

    metrics = metrics_of(text_atlas)
    entry = metrics["models"][MODEL]
    assert metrics["corpora"] == {} and entry["corpora"] == {} and entry["sense_pairs"] is None
    # The corpus-wide statistics read every routed token of the texts.
    n_tokens = read_config(text_atlas, ROUTING).num_rows
    assert entry["n_tokens"] == n_tokens
    # Expert load of the first MoE layer, counted here from the routing rows: slots of e / (T k).
    experts = read_config(text_atlas, ROUTING).column("experts").to_pylist()
    top_k = len(experts[0][0])
    counts = {}
    for token in experts:
        for e in token[0]:
            counts[e] = counts.get(e, 0) + 1
    load = entry["experts"]["load"][0]
    assert {e: share for e, share in enumerate(load) if share} == pytest.approx(
        {e: c / (n_tokens * top_k) for e, c in counts.items()}
    )
