"""`atlas build --corpus jsonl --texts FILE`: any probe set -> jsonl-examples / jsonl-pairs, routed, validated.

Expected pairs are recomputed here from the raw lines. The model is RANDOM-INIT (tiny-deepseek-v3).
"""

from __future__ import annotations

import json

import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.corpora.custom import CorpusInputError
from atlas_build.corpora.jsonl import read

from .byo import (
    FIXTURES,
    ROUTING,
    build,
    cli,
    copy_atlas,
    failures,
    no_model,
    refused_cleanly,
    rewrite,
    statuses,
    validate,
)
from .byo import read as read_config

PROBE = FIXTURES / "jsonl" / "probe.jsonl"


def raw():
    return [json.loads(line) for line in PROBE.read_text().splitlines() if line.strip()]


def test_reader_examples_and_pairs():
    lines = raw()
    by_id = {str(r["id"]): r for r in lines}
    corpus = read(PROBE)
    examples = {r["example_id"]: r for r in corpus.tables["jsonl-examples"].to_pylist()}
    pairs = {(r["example_a"], r["example_b"]): r for r in corpus.tables["jsonl-pairs"].to_pylist()}
    assert set(examples) == set(by_id)
    for example_id, line in by_id.items():
        row = examples[example_id]
        assert row["text"] == line["text"] and row["label"] == line.get("label")
        if "target_start" in line:
            form = line["text"][line["target_start"] : line["target_end"]]
            assert row["target_form"] == form and row["lemma"] == line.get("lemma", form.lower())
        else:
            assert row["target_start"] is None and row["lemma"] is None
    wanted = {(str(r["id"]), r["pair_with"]): r for r in lines if "pair_with" in r}
    assert set(pairs) == set(wanted)
    for (a, b), line in wanted.items():
        same = line["same"] if "same" in line else by_id[a]["label"] == by_id[b]["label"]
        assert pairs[(a, b)]["same_sense"] is same
    assert corpus.counts["pairs"] == {"total": 8, "same": 4, "different": 4}


GOOD = {"id": "a", "text": "The bank was closed.", "target_start": 4, "target_end": 8, "label": "x"}
OTHER = {"id": "b", "text": "A bank of clouds rose.", "target_start": 2, "target_end": 6, "label": "y"}

CASES = {
    "bad-json": ((GOOD, '{"id": "b",'), r"line 2: not valid JSON"),
    "unknown-field": (({**GOOD, "target_strat": 1},), r"line 1: unknown field\(s\) 'target_strat'"),
    "missing-text": (({"id": "a"},), r"line 1: missing field 'text'"),
    "duplicate-id": ((GOOD, "", GOOD), r"line 3: duplicate id 'a' \(first on line 1\)"),
    "half-span": (
        ({**GOOD, "target_end": None},),
        r"line 1: fields 'target_start' and 'target_end' go together",
    ),
    "span-outside": (({**GOOD, "target_end": 99},), r"line 1: fields 'target_start'/'target_end' \(4, 99\)"),
    "span-space": (
        ({**GOOD, "target_start": 3},),
        r"line 1: the target span \(3, 8\) = ' bank' starts or ends",
    ),
    "span-type": (({**GOOD, "target_start": "4"},), r"line 1: field 'target_start' must be an integer"),
    "bad-pos": (({**GOOD, "pos": "noun"},), r"line 1: field 'pos' must be one of n, v, a, r"),
    "same-without-pair": (({**GOOD, "same": True},), r"line 1: field 'same' needs 'pair_with'"),
    "unknown-partner": (
        ({**GOOD, "pair_with": "zz", "same": True},),
        r"line 1: field 'pair_with': no line has id",
    ),
    "self-pair": (
        ({**GOOD, "pair_with": "a", "same": True},),
        r"line 1: field 'pair_with': a line cannot pair",
    ),
    "reverse-pair": (
        ({**GOOD, "pair_with": "b"}, {**OTHER, "pair_with": "a"}),
        r"line 2: field 'pair_with': the pair \('b', 'a'\) is already given on line 1",
    ),
    "needs-same": (
        ({**GOOD, "label": None}, {**OTHER, "pair_with": "a"}),
        r"line 2: field 'same' is needed",
    ),
    "same-vs-labels": (
        (GOOD, {**OTHER, "pair_with": "a", "same": True}),
        r"line 2: field 'same' is true but",
    ),
    "pair-without-target": (
        ({"id": "a", "text": "No target here."}, {**OTHER, "pair_with": "a", "same": False}),
        r"line 2: field 'pair_with': 'a' has no target span",
    ),
    "lemma-differs": (
        ({**GOOD, "lemma": "bank"}, {**OTHER, "lemma": "banks", "pair_with": "a"}),
        r"line 2: field 'pair_with': the two targets differ in lemma or pos",
    ),
    "empty": (("", " "), r"probe\.jsonl is empty"),
    # Strict JSON (corpora.custom.json_objects): once a traceback (nesting) or silently the last key.
    "deep-nesting": (
        (GOOD, '{"id": "b", "text": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        r"line 2: nested too deeply",
    ),
    "duplicate-key": (('{"id": "a", "text": "x", "text": "y"}',), r"line 1: key 'text' appears twice"),
    "nan": (('{"id": "a", "text": "x", "target_start": NaN}',), r"line 1: NaN is not a JSON value"),
    "not-an-object": (("[1, 2]",), r"line 1: expected a JSON object, got list"),
}


def write(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_named(tmp_path, case):
    lines, message = CASES[case]
    with pytest.raises(CorpusInputError, match=message) as caught:
        read(write(tmp_path / "probe.jsonl", *lines))
    assert str(caught.value).startswith(str(tmp_path / "probe.jsonl"))


@pytest.fixture(scope="module")
def jsonl_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("jsonl") / "atlas"
    build(out, "jsonl", texts=str(PROBE))
    return out


def test_build_routes_every_line(jsonl_atlas):
    configs = Manifest.load(jsonl_atlas).configs()
    assert configs["jsonl-examples"]["rows"] == 11 and configs["jsonl-pairs"]["rows"] == 8
    routing = read_config(jsonl_atlas, ROUTING).to_pandas()
    assert set(routing.corpus) == {"jsonl-examples"} and routing.source_id.nunique() == 11
    # The line without a target is routed, and none of its tokens is a target.
    assert not routing[routing.source_id == "11"].is_target.any()
    assert routing[routing.source_id == "spring-1"].is_target.any()


def test_validation_passes_and_catches_planted_defects(jsonl_atlas, tmp_path):
    report = validate(jsonl_atlas)
    assert report.passed, failures(report)
    out = copy_atlas(jsonl_atlas, tmp_path / "bad")

    def flip(rows):
        for row in rows:
            if row["pair_id"] == "spring-4|spring-1":  # both labelled spring%coil
                row["same_sense"] = False
        return rows

    def half_target(rows):
        for row in rows:
            if row["example_id"] == "match-1":
                row["target_form"] = None
        return rows

    rewrite(out, "jsonl-pairs", flip)
    rewrite(out, "jsonl-examples", half_target)
    report = validate(out, hashes=False, tokenizers=False)
    assert statuses(report, "jsonl-pairs")["same-sense"] == "failed"
    assert statuses(report, "jsonl-examples")["target-span"] == "failed"
    result = next(r for r in report.results if r.config == "jsonl-pairs" and r.check == "same-sense")
    assert any("spring-4" in example for example in result.failing_examples)


def test_bad_input_leaves_nothing_and_loads_no_model(tmp_path, monkeypatch):
    no_model(monkeypatch)
    bad = write(tmp_path / "probe.jsonl", GOOD, {**OTHER, "pair_with": "a", "same": True})
    out = tmp_path / "out"
    result = cli(
        "build", "--model", "tiny-deepseek-v3", "--corpus", "jsonl", "--texts", str(bad), "--out", str(out)
    )
    refused_cleanly(result, "error:", "probe.jsonl, line 2", "field 'same'")
    assert not out.exists()


def test_metrics_pairs_and_probe(jsonl_atlas):
    from .byo import MODEL, metrics_of

    block = metrics_of(jsonl_atlas)["models"][MODEL]["corpora"]["jsonl"]
    pairs = read_config(jsonl_atlas, "jsonl-pairs").to_pylist()
    same = sum(p["same_sense"] for p in pairs)
    assert block["sense_pairs"]["n_pairs"] == {"same": same, "different": len(pairs) - same}
    # Every example with a target is labelled: the probe runs on them (the untargeted line is left out).
    assert block["probe"]["n_examples"] == 10 and block["probe"]["n_lemmas"] == 2


def test_bad_input_leaves_an_existing_atlas_as_it_was(jsonl_atlas, tmp_path):
    from atlas_build.errors import AtlasError

    from .byo import files_of

    out = copy_atlas(jsonl_atlas, tmp_path / "atlas")
    before = files_of(out)
    bad = write(tmp_path / "other.jsonl", GOOD, {**OTHER, "pair_with": "nobody", "same": False})
    with pytest.raises(AtlasError, match=r"other\.jsonl, line 2: field 'pair_with': no line has id 'nobody'"):
        build(out, "jsonl", texts=str(bad))
    assert files_of(out) == before
