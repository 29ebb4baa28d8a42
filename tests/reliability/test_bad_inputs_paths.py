"""The bad-input catalog, continued for issue 27: every command and option added since the catalog was written.

Each case runs the command in this process and asserts its exit code, exactly one line naming the problem (the
CLI's `error:` line, or click's `Error:` line for an option out of range), no traceback, and that nothing changed
on disk: a tree hash (sha256 of every file, hidden ones included) of the atlas and of the would-be output is
the same before and after, and an output that did not exist still does not.
"""

from __future__ import annotations

import errno
import gzip
import json
import shutil
from pathlib import Path

import pytest

from ._support import FAKE_ARGS, snapshot
from .conftest import cli, copy_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = "tiny-deepseek-v3"


def refused(args: list[str], *trees: Path, code: int = 2, words: tuple[str, ...] = ()) -> str:
    """Run `atlas ARGS`: exit `code`, one error line holding every word, no traceback, `trees` untouched."""
    before = {tree: snapshot(tree) for tree in trees}
    existed = {tree: tree.exists() for tree in trees}
    result = cli(args)
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], (word, errors[0])
    for tree in trees:
        assert tree.exists() == existed[tree], f"{tree} was created or removed"
        assert snapshot(tree) == before[tree], f"{tree} changed"
    return errors[0]


def no_model(monkeypatch) -> None:
    """Fail the test if the build loads a model: bad input is refused before that."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("atlas_build.builder.steps.make_engine", refuse)


@pytest.fixture
def atlas(tmp_path, fake_reference) -> Path:
    return copy_of(fake_reference, tmp_path / "atlas")


# ---- option ranges, checked by click before anything runs ------------------------------------------------
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["audit", "{atlas}", "--seed", "-1"], "--seed"),
        (["audit", "{atlas}", "--batch-size", "0"], "--batch-size"),
        (["audit", "{atlas}", "--batch-size", "-4"], "--batch-size"),
        (["metrics", "{atlas}", "--out", "{out}", "--seed", "-1"], "--seed"),
        (["metrics", "{atlas}", "--out", "{out}", "--bootstrap", "-1"], "--bootstrap"),
        (["metrics", "{atlas}", "--out", "{out}", "--min-count", "0"], "--min-count"),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--seed", "-1"], "--seed"),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--strength", "2"], "--strength"),
        (["validate", "{atlas}", "--examples", "-1"], "--examples"),
        (["model", "materialize", TINY, "{out}", "--seed", "-1"], "--seed"),
        (["build", "--out", "{out}", "--model", TINY, "--seed", "-2"], "--seed"),
    ],
)
def test_numeric_options_out_of_range(tmp_path, atlas, args, option):
    out = tmp_path / "out"
    args = [a.format(atlas=atlas, out=out) for a in args]
    refused(args, atlas, out, words=(f"Invalid value for '{option}'",))


# ---- metrics, calibrate, explore: SOURCE, --revision, --layers, --out, --metrics --------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["metrics", "{atlas}", "--revision", "main", "--out", "{out}"], ("is a local folder",)),
        (["metrics", "{plain}", "--out", "{out}"], ("is not an atlas", "no manifest.json")),
        (["metrics", "org/name@", "--out", "{out}"], ("the revision after '@' is empty",)),
        (["metrics", "org/name@v1", "--out", "{out}"], ("--revision v1",)),
        (["metrics", "./no/such/atlas", "--out", "{out}"], ("does not exist",)),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--layers", ""], ("no layer id",)),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--layers", ",,"], ("no layer id",)),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--layers", "2,x"], ("decoder layer ids",)),
        (["metrics", "calibrate", "{atlas}", "--out", "{out}", "--layers", "-1"], ("layer ids are >= 0",)),
        (["metrics", "calibrate", "{atlas}", "--out", "{atlas}/cal"], ("inside the atlas",)),
        (["explore", "{atlas}", "--out", "{file}/site"], ("is below the file",)),
        (
            ["explore", "{atlas}", "--out", "{out}", "--metrics", "{any_json}"],
            ("not an `atlas metrics` report",),
        ),
        (["explore", "{atlas}", "--out", "{out}", "--metrics", "{foreign}"], ("metrics of another atlas",)),
    ],
)
def test_metrics_calibrate_explore_inputs(tmp_path, atlas, args, words):
    out, plain, file = tmp_path / "out", tmp_path / "plain", tmp_path / "file"
    plain.mkdir()
    (plain / "notes.txt").write_text("not an atlas")
    file.write_text("x")
    any_json = tmp_path / "any.json"
    any_json.write_text(json.dumps({"models": {}}))
    foreign = tmp_path / "foreign.json"
    foreign.write_text(
        json.dumps(
            {
                "format": "routing-atlas-metrics",
                "models": {},
                "provenance": {"manifest_sha256": "0" * 64, "data_files": {"senses/x.parquet": "1" * 64}},
            }
        )
    )
    names = {
        "atlas": atlas,
        "out": out,
        "plain": plain,
        "file": file,
        "any_json": any_json,
        "foreign": foreign,
    }
    args = [a.format(**names) for a in args]
    refused(args, atlas, out, plain, words=words)


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--sample", "0", "--sample must be at least 1"),
        ("--threshold", "1.5", "--threshold must lie in [0, 1]"),
    ],
)
def test_audit_sample_and_threshold(atlas, option, value, words):
    refused(["audit", str(atlas), option, value], atlas, words=(words,))


def test_explore_into_a_read_only_place(tmp_path, atlas, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "new" / "deeper" / "site"
    refused(
        ["explore", str(atlas), "--out", str(out)], atlas, tmp_path / "new", words=("Read-only file system",)
    )


# ---- build: ids and storage settings ---------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["org//name", "https://example.org/m", "org/", "a/b/c", "name@main"])
def test_model_ids_that_are_not_ids(tmp_path, fakes, model_id):
    out = tmp_path / "out"
    refused(["build", "--out", str(out), *FAKE_ARGS, "--model-id", model_id], out, words=("--model-id",))


def test_an_empty_revision_is_named(tmp_path):
    out = tmp_path / "out"
    refused(["build", "--out", str(out), "--model", "org/name@"], out, words=("revision after '@' is empty",))


def test_other_storage_settings_need_replace_routing(tmp_path, fakes, atlas):
    line = refused(
        ["build", "--out", str(atlas), *FAKE_ARGS, "--weights-dtype", "float32"],
        atlas,
        words=("--weights-dtype float16 -> float32", "--replace-routing"),
    )
    assert "--slug" in line
    result = cli(
        ["build", "--out", str(atlas), *FAKE_ARGS, "--weights-dtype", "float32", "--replace-routing"]
    )
    assert result.exit_code == 0, result.output


# ---- build: corpus files that are damaged, or whose spans miss their word ---------------------------------
def _swords(tmp_path: Path, change) -> Path:
    data = json.loads((FIXTURES / "swords" / "swords-fixture_dev.json").read_text())
    raw = change(data)
    path = tmp_path / "swords_dev.json"
    path.write_bytes(raw if isinstance(raw, bytes) else json.dumps(data).encode())
    return path


def _gzip_bad_byte(tmp_path: Path) -> Path:
    packed = bytearray(gzip.compress((FIXTURES / "swords" / "swords-fixture_dev.json").read_bytes()))
    packed[len(packed) // 2] ^= 0xFF
    path = tmp_path / "swords_dev.json.gz"
    path.write_bytes(bytes(packed))
    return path


def _first_target(data: dict) -> tuple[str, dict]:
    return next(iter(data["targets"].items()))


def _jsonl(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _wic_other_word(tmp_path: Path) -> Path:
    root = shutil.copytree(FIXTURES / "wic" / "WiC_dataset", tmp_path / "wic")
    data = sorted(root.rglob("*.data.txt"))[0]
    lines = data.read_text().split("\n")
    target, pos, indices, first, second = lines[0].split("\t")
    other = next(i for i, t in enumerate(first.split()) if not t.lower().startswith(target[0].lower()))
    lines[0] = "\t".join([target, pos, f"{other}-{indices.split('-')[1]}", first, second])
    data.write_text("\n".join(lines))
    return root


def _damaged_dataset(tmp_path: Path) -> Path:
    import datasets

    path = tmp_path / "texts-dataset"
    datasets.Dataset.from_dict({"text": ["one text", "another text"]}).save_to_disk(str(path))
    (path / "state.json").write_text(json.dumps({"_data_files": [{}]}))
    return path


def _traces(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "traces.jsonl"
    path.write_text(line + "\n")
    return path


TRACE = '{"id": "t1", "prompt": "Hi", "reasoning": "Hm.", "answer": "Yo"'
CORPUS_CASES = {
    "swords-target-with-spaces": (
        lambda tmp: [
            "--corpus",
            "swords",
            "--swords",
            str(
                _swords(
                    tmp,
                    lambda d: d["targets"].__setitem__(
                        _first_target(d)[0],
                        {
                            **_first_target(d)[1],
                            "target": f" {_first_target(d)[1]['target']} ",
                            "offset": _first_target(d)[1]["offset"] - 1,
                        },
                    ),
                )
            ),
        ],
        "without white space around it",
    ),
    "swords-repeated-context-id": (
        lambda tmp: [
            "--corpus",
            "swords",
            "--swords",
            str(
                _swords(
                    tmp,
                    lambda d: (
                        json.dumps(d)
                        .replace(
                            '"contexts": {',
                            '"contexts": {"' + next(iter(d["contexts"])) + '": {"context": "x"}, ',
                            1,
                        )
                        .encode()
                    ),
                )
            ),
        ],
        "appears twice",
    ),
    "swords-deep-json": (
        lambda tmp: [
            "--corpus",
            "swords",
            "--swords",
            str(_swords(tmp, lambda d: ('{"contexts": ' + "[" * 100_000 + "]" * 100_000 + "}").encode())),
        ],
        "nested too deeply",
    ),
    "swords-gzip-bad-byte": (
        lambda tmp: ["--corpus", "swords", "--swords", str(_gzip_bad_byte(tmp))],
        "a broken gzip file",
    ),
    "swords-lone-surrogate": (
        lambda tmp: [
            "--corpus",
            "swords",
            "--swords",
            str(
                _swords(
                    tmp, lambda d: json.dumps(d).replace('"context": "', '"context": "\\ud800', 1).encode()
                )
            ),
        ],
        "lone UTF-16 surrogate",
    ),
    "jsonl-span-inside-a-word": (
        lambda tmp: [
            "--corpus",
            "jsonl",
            "--texts",
            str(_jsonl(tmp, '{"id": "a", "text": "the riverbank", "target_start": 9, "target_end": 13}')),
        ],
        "inside a word",
    ),
    "jsonl-span-at-another-word": (
        lambda tmp: [
            "--corpus",
            "jsonl",
            "--texts",
            str(
                _jsonl(
                    tmp,
                    '{"id": "a", "text": "the bank is here", "target_start": 0, "target_end": 3, "lemma": "bank"}',
                )
            ),
        ],
        "not a form of the lemma 'bank'",
    ),
    "jsonl-lone-surrogate": (
        lambda tmp: ["--corpus", "jsonl", "--texts", str(_jsonl(tmp, '{"id": "a", "text": "x\\udc00"}'))],
        "lone UTF-16 surrogate",
    ),
    "jsonl-infinity": (
        lambda tmp: [
            "--corpus",
            "jsonl",
            "--texts",
            str(_jsonl(tmp, '{"id": "a", "text": "x", "label": Infinity}')),
        ],
        "Infinity is not a JSON value",
    ),
    "wic-index-at-another-word": (
        lambda tmp: ["--corpus", "wic", "--wic", str(_wic_other_word(tmp))],
        "not a form of the lemma",
    ),
    "text-damaged-dataset-state": (
        lambda tmp: ["--corpus", "text", "--texts", str(_damaged_dataset(tmp))],
        "not a dataset saved with `save_to_disk`",
    ),
    "traces-meta-nan": (
        lambda tmp: [
            "--corpus",
            "traces",
            "--traces",
            str(_traces(tmp, TRACE + ', "meta": {"score": NaN}}')),
        ],
        "NaN is not a JSON value",
    ),
    "traces-lone-surrogate": (
        lambda tmp: [
            "--corpus",
            "traces",
            "--traces",
            str(_traces(tmp, TRACE.replace("Hm.", "\\ud83d") + "}")),
        ],
        "lone UTF-16 surrogate",
    ),
    "traces-bool-id": (
        lambda tmp: [
            "--corpus",
            "traces",
            "--traces",
            str(_traces(tmp, TRACE.replace('"t1"', "true") + "}")),
        ],
        "non-empty string or an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_corpus_inputs_refused_before_anything_is_written(tmp_path, monkeypatch, case):
    no_model(monkeypatch)
    make, words = CORPUS_CASES[case]
    extra = make(tmp_path)
    out = tmp_path / "out"
    inputs = sorted(p for p in tmp_path.iterdir() if p != out)
    refused(
        ["build", "--model", TINY, "--out", str(out), "--no-progress", *extra], out, *inputs, words=(words,)
    )


def test_corpus_input_refused_into_an_existing_atlas(tmp_path, monkeypatch, atlas):
    no_model(monkeypatch)
    probe = _jsonl(tmp_path, '{"id": "a", "text": "the riverbank", "target_start": 9, "target_end": 13}')
    refused(
        ["build", "--model", TINY, "--out", str(atlas), "--corpus", "jsonl", "--texts", str(probe)],
        atlas,
        words=("inside a word",),
    )


# ---- left behind or unclear ------------------------------------------------------------------------------
def test_a_failed_publish_leaves_no_folder_and_no_lock(tmp_path, atlas):
    (atlas / "models").joinpath(next((atlas / "models").iterdir()).name).write_bytes(b"damaged")
    releases = tmp_path / "releases"
    result = cli(["publish", str(atlas), "--version", "1.0.0", "--to", str(releases)])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert not releases.exists(), sorted(p.name for p in releases.iterdir())


def test_a_card_with_an_unreadable_metrics_file_says_so(atlas):
    (atlas / "metrics").mkdir()
    (atlas / "metrics" / "metrics.json").write_text("{not json")
    result = cli(["card", str(atlas)])
    assert result.exit_code == 0, result.output
    card = (atlas / "README.md").read_text()
    assert "## Routing metrics" in card and "metrics/metrics.json is unreadable" in card


def test_integer_trace_ids_are_accepted_as_the_message_says(tmp_path):
    from atlas_build.corpora.traces import read_traces

    (trace,) = read_traces(_traces(tmp_path, TRACE.replace('"t1"', "7") + "}"))
    assert trace.id == "7"
