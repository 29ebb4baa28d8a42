"""`atlas build --corpus traces` on the sample file with the tiny model: traces config, labels, offsets."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.builder import BuildConfig, run_build
from atlas_build.corpora.markers import find_markers
from atlas_build.corpora.traces import read_traces

from .conftest import MODEL

SLUG = MODEL  # the built-in's slug


def build(out, traces, **options):
    return run_build(
        BuildConfig(model=MODEL, out=out, corpus="traces", traces=str(traces), progress=False, **options),
        log=lambda *_: None,
    )


@pytest.fixture(scope="module")
def loaded(traces_atlas):
    traces = datasets.load_dataset(str(traces_atlas), "traces", split="train")
    routing = datasets.load_dataset(str(traces_atlas), f"routing-{SLUG}", split="train")
    return {row["trace_id"]: row for row in traces}, routing.to_pandas()


def test_traces_config(loaded, sample_jsonl):
    traces, _ = loaded
    given = {t.id: t for t in read_traces(sample_jsonl)}
    assert sorted(traces) == sorted(f"{SLUG}:{i}" for i in given)
    for trace_id, row in traces.items():
        trace = given[trace_id.split(":", 1)[1]]
        assert row["model_slug"] == SLUG and row["template"] == "chat"
        assert row["source"] == "import:sample.jsonl"
        assert row["meta"] == (None if trace.meta is None else json.dumps(trace.meta, sort_keys=True))
        spans = {s["name"]: (s["start"], s["end"]) for s in row["segments"]}
        text = row["text"]
        assert text[slice(*spans["prompt"])] == trace.prompt
        assert text[slice(*spans["think"])] == trace.reasoning
        assert text[slice(*spans["answer"])] == trace.answer
        assert text[: spans["think"][0]].endswith("<｜Assistant｜><think>\n")


def test_segment_labels(loaded):
    traces, routing = loaded
    for trace_id, row in traces.items():
        tokens = routing[routing.source_id == trace_id].sort_values("token_index")
        assert (tokens.corpus == "traces").all()
        assert tokens.token_index.tolist() == list(range(len(tokens)))
        for segment in row["segments"]:
            inside = tokens[(tokens.char_start >= segment["start"]) & (tokens.char_end <= segment["end"])]
            inside = inside[inside.char_start < inside.char_end]
            assert len(inside) > 0 and (inside.segment == segment["name"]).all(), (trace_id, segment)
        # BOS (no characters) and the template markup have no segment.
        assert tokens.iloc[0].char_start == -1 and pd.isna(tokens.iloc[0].segment)
        for tag in ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>"):
            tagged = tokens[tokens.token == tag]
            assert len(tagged) == 1 and tagged.segment.isna().all(), tag
        assert set(tokens.segment.dropna()) == {"prompt", "think", "answer"}


def test_marker_labels(loaded):
    traces, routing = loaded
    trace_id = f"{SLUG}:arith-1"
    text = traces[trace_id]["text"]
    tokens = routing[routing.source_id == trace_id].sort_values("token_index")
    start = text.index("let me check")
    phrase = tokens[(tokens.char_end > start) & (tokens.char_start < start + len("let me check"))]
    assert phrase.token.tolist() == ["Ġlet", "Ġme", "Ġcheck"]
    assert (phrase.marker == "let me check").all() and (phrase.segment == "think").all()
    wait = tokens[tokens.token == "ĠWait"]
    assert wait.marker.tolist() == ["wait"]
    # Every marker the lexicon finds in the segments is on the tokens, and nothing else is labelled.
    for trace_id, row in traces.items():
        tokens = routing[routing.source_id == trace_id]
        spans = [(s["start"], s["end"]) for s in row["segments"]]
        expected = find_markers(row["text"], spans)
        labelled = tokens[tokens.marker.notna()]
        covered = set()
        for name, start, end in expected:
            hit = tokens[(tokens.char_start < end) & (tokens.char_end > start) & (tokens.char_start >= 0)]
            assert (hit.marker == name).all(), (trace_id, name)
            covered |= set(hit.token_index)
        assert set(labelled.token_index) == covered
    names = set(routing.marker.dropna())
    assert {"wait", "let me check", "hmm", "alternatively", "on second thought", "double-check"} <= names


def test_offsets_match_token_text(loaded, tiny_tokenizer):
    traces, routing = loaded
    for trace_id, row in traces.items():
        tokens = routing[(routing.source_id == trace_id) & (routing.char_start >= 0)]
        for token_id, start, end in zip(tokens.token_id, tokens.char_start, tokens.char_end, strict=True):
            assert row["text"][start:end] == tiny_tokenizer.decode([int(token_id)]), (trace_id, start)


def test_manifest_counts(traces_atlas):
    manifest = Manifest.load(traces_atlas)
    counts = manifest.corpus_counts["traces"][SLUG]
    assert counts["traces"] == 3 and counts["file"] == "sample.jsonl" and counts["markers"] > 10
    assert manifest.configs()["traces"]["rows"] == 3


def test_second_model_merges_and_rebuild_replaces(traces_atlas, tmp_path, sample_jsonl):
    import shutil

    out = tmp_path / "atlas"
    shutil.copytree(traces_atlas, out)
    # Same checkpoint under another slug: its traces are added, the first model's are kept.
    one = tmp_path / "one.jsonl"
    one.write_text(sample_jsonl.read_text().splitlines()[0] + "\n")
    build(out, one, slug="second")
    manifest = Manifest.load(out)
    ids = datasets.load_dataset(str(out), "traces", split="train")["trace_id"]
    assert sorted(ids) == sorted([f"{SLUG}:arith-1", f"{SLUG}:lamp-2", f"{SLUG}:capital-3", "second:arith-1"])
    assert set(manifest.corpus_counts["traces"]) == {SLUG, "second"}
    routing = datasets.load_dataset(str(out), "routing-second", split="train")
    assert set(routing["source_id"]) == {"second:arith-1"}


def test_ensure_traces_with_an_engine(tmp_path, sample_jsonl, tiny_tokenizer):
    """With the build's engine given, its tokenizer and context are used (no second tokenizer load)."""
    from types import SimpleNamespace

    from atlas_build.corpora.traces import TracesInputError, ensure_traces

    config = BuildConfig(model=MODEL, out=tmp_path / "atlas", corpus="traces", traces=str(sample_jsonl))
    config.out.mkdir()
    manifest = Manifest()
    items = ensure_traces(config, manifest, engine=SimpleNamespace(tokenizer=tiny_tokenizer, max_length=4096))
    assert [i.source_id for i in items] == sorted(f"{SLUG}:{i}" for i in ("arith-1", "lamp-2", "capital-3"))
    assert all(i.corpus == "traces" and len(i.segments) == 3 and i.markers for i in items)
    assert Manifest.load(config.out).configs()["traces"]["rows"] == 3
    with pytest.raises(TracesInputError, match=r"longer than the model's context of 20 tokens: id 'arith-1'"):
        ensure_traces(config, manifest, engine=SimpleNamespace(tokenizer=tiny_tokenizer, max_length=20))
