"""Bad traces files are refused with the file, line, field or id named, and nothing is written."""

from __future__ import annotations

import json

import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.builder import BuildConfig, run_build
from atlas_build.corpora.traces import TracesInputError, read_traces
from atlas_build.errors import AtlasError

from .conftest import MODEL

GOOD = {"id": "a", "prompt": "P?", "reasoning": "Wait, r.", "answer": "A."}


def write(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


CASES = {
    "malformed-json": ((GOOD, '{"id": "b", "prompt": "P"'), r"bad\.jsonl, line 2: not valid JSON"),
    "missing-field": (
        (GOOD, {"id": "b", "prompt": "P", "answer": "A"}),
        r"line 2: missing field 'reasoning'",
    ),
    "wrong-type": ((GOOD, {**GOOD, "id": "b", "answer": 3}), r"line 2: field 'answer' must be a string"),
    "empty-prompt": (({**GOOD, "prompt": "  "},), r"line 1: field 'prompt' is empty"),
    "bad-id": (({**GOOD, "id": ""},), r"line 1: field 'id' must be a non-empty string"),
    "unknown-field": (({**GOOD, "reasonning": "x"},), r"line 1: unknown field\(s\) 'reasonning'"),
    "meta-not-object": (({**GOOD, "meta": [1]},), r"line 1: field 'meta' must be a JSON object or null"),
    "not-an-object": (("[1, 2]",), r"line 1: expected a JSON object, got list"),
    "think-tag": (({**GOOD, "reasoning": "r</think>"},), r"line 1: field 'reasoning' contains '</think>'"),
    "duplicate-id": ((GOOD, "", {**GOOD, "prompt": "Q"}), r"line 3: duplicate id 'a' \(first on line 1\)"),
    "empty": (("", "   "), r"bad\.jsonl is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_refuses(tmp_path, case):
    lines, message = CASES[case]
    with pytest.raises(TracesInputError, match=message):
        read_traces(write(tmp_path / "bad.jsonl", *lines))


def test_missing_file(tmp_path):
    with pytest.raises(TracesInputError, match="does not exist"):
        read_traces(tmp_path / "nope.jsonl")


def build(out, traces):
    run_build(
        BuildConfig(model=MODEL, out=out, corpus="traces", traces=str(traces), progress=False),
        log=lambda *_: None,
    )


@pytest.mark.parametrize("case", ["malformed-json", "missing-field"])
def test_build_writes_nothing(tmp_path, case):
    lines, message = CASES[case]
    out = tmp_path / "atlas"
    with pytest.raises(AtlasError, match=message):
        build(out, write(tmp_path / "bad.jsonl", *lines))
    assert not out.exists()


def test_too_long_trace_is_refused_with_its_id_and_count(tmp_path, tiny_tokenizer):
    from types import SimpleNamespace

    from atlas_build.builder import BuildConfig
    from atlas_build.corpora.traces import ensure_traces

    long = {**GOOD, "id": "long-1", "reasoning": "wait " * 5000}
    config = BuildConfig(model=MODEL, out=tmp_path / "atlas", corpus="traces", traces="x")
    config.traces = str(write(tmp_path / "bad.jsonl", GOOD, long))
    config.out.mkdir()
    engine = SimpleNamespace(tokenizer=tiny_tokenizer, max_length=4096)  # the tiny model's context
    with pytest.raises(TracesInputError) as caught:
        ensure_traces(config, Manifest(), engine=engine)
    message = str(caught.value)
    assert "1 trace(s) longer than the model's context of 4096 tokens" in message
    assert "id 'long-1' (line 2) has 50" in message and "not split" in message
    assert list(config.out.iterdir()) == []


def test_existing_atlas_is_unchanged(tmp_path, traces_atlas):
    import shutil

    out = tmp_path / "atlas"
    shutil.copytree(traces_atlas, out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    hashes = Manifest.load(out).data_hashes()
    with pytest.raises(TracesInputError, match="line 2: not valid JSON"):
        build(out, write(tmp_path / "bad.jsonl", *CASES["malformed-json"][0]))
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # The lock file comes and goes; every other byte is as it was.
    assert {k: v for k, v in after.items() if k.parts[0] != ".atlas"} == {
        k: v for k, v in before.items() if k.parts[0] != ".atlas"
    }
    assert Manifest.load(out).data_hashes() == hashes


def test_cli_exit_code(tmp_path):
    from click.testing import CliRunner

    from atlas_build.cli import main

    bad = write(tmp_path / "bad.jsonl", GOOD, {"id": "b"})
    result = CliRunner().invoke(
        main,
        ["build", "--model", MODEL, "--corpus", "traces", "--traces", str(bad), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2 and "line 2: missing field 'prompt'" in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(main, ["traces", "check", str(bad)])
    assert result.exit_code == 2 and "missing field" in result.output
