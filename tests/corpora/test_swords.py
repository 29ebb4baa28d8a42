"""`atlas build --corpus swords --swords FILE`: SWORDS' published JSON -> swords-examples / swords-substitutions.

The fixture (tests/fixtures/swords, our own sentences) is in SWORDS' JSON format; scores and relations are
recomputed here from the raw labels. The model is RANDOM-INIT (tiny-deepseek-v3).
"""

from __future__ import annotations

import gzip
import json

import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.corpora.custom import CorpusInputError
from atlas_build.corpora.swords import read

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

SWORDS = FIXTURES / "swords" / "swords-fixture_dev.json"


def raw():
    return json.loads(SWORDS.read_text())


def expected_relation(labels):
    accepted = sum(label in ("TRUE", "TRUE_IMPLICIT") for label in labels) / len(labels)
    return accepted, "acceptable" if accepted > 0.5 else "conceivable" if accepted > 0 else "rejected"


def test_reader_texts_scores_and_relations(tmp_path):
    data = raw()
    packed = tmp_path / "swords-fixture_dev.json.gz"
    packed.write_bytes(gzip.compress(SWORDS.read_bytes()))
    for path in (SWORDS, packed):  # SWORDS ships gzip files; plain JSON reads the same
        corpus = read(path)
        examples = {r["example_id"]: r for r in corpus.tables["swords-examples"].to_pylist()}
        subs = {r["substitution_id"]: r for r in corpus.tables["swords-substitutions"].to_pylist()}
        assert set(examples) == set(data["targets"]) and set(subs) == set(data["substitutes"])
        for tid, target in data["targets"].items():
            context = data["contexts"][target["context_id"]]["context"]
            example = examples[tid]
            assert example["text"] == context and example["split"] == "dev"
            assert context[example["target_start"] : example["target_end"]] == target["target"]
        for sid, sub in data["substitutes"].items():
            row, target = subs[sid], data["targets"][sub["target_id"]]
            context = data["contexts"][target["context_id"]]["context"]
            score, relation = expected_relation(data["substitute_labels"][sid])
            assert (row["score"], row["relation"], row["n_labels"]) == (score, relation, 10)
            surface = row["text"][row["target_start"] : row["target_end"]]
            assert surface.lower() == sub["substitute"].lower()
            assert (
                row["text"]
                == context[: target["offset"]] + surface + context[target["offset"] + len(target["target"]) :]
            )
            # Capitalised like the target ("Bright colours" -> "Vivid colours").
            assert surface[0].isupper() == target["target"][0].isupper()
    assert corpus.counts["substitutions"] == {"total": 21, "acceptable": 10, "conceivable": 6, "rejected": 5}


def broken(tmp_path, change):
    data = raw()
    change(data)
    path = tmp_path / "swords-bad_dev.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def _first(section):
    return lambda data: next(iter(data[section].values()))


def _offset(data):
    _first("targets")(data)["offset"] += 2


def _dangling_target(data):
    _first("substitutes")(data)["target_id"] = "t:nowhere"


def _unknown_label(data):
    sid = next(iter(data["substitute_labels"]))
    data["substitute_labels"][sid][3] = "MAYBE"


def _no_labels(data):
    del data["substitute_labels"][next(iter(data["substitute_labels"]))]


def _missing_section(data):
    del data["targets"]


def _bad_context_id(data):
    _first("targets")(data)["context_id"] = "c:gone"


CASES = {
    "offset": (_offset, r"targets\['t:[0-9a-f]+'\]\.offset: the context holds"),
    "dangling-target": (
        _dangling_target,
        r"substitutes\['s:[0-9a-f]+'\]\.target_id: 't:nowhere' is not an id",
    ),
    "unknown-label": (_unknown_label, r"substitute_labels\['s:[0-9a-f]+'\]: unknown label 'MAYBE'"),
    "no-labels": (_no_labels, r"substitute_labels\['s:[0-9a-f]+'\]: every substitute needs a non-empty list"),
    "missing-section": (_missing_section, r"missing section 'targets'"),
    "bad-context": (
        _bad_context_id,
        r"targets\['t:[0-9a-f]+'\]\.context_id: 'c:gone' is not an id of 'contexts'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_named(tmp_path, case):
    change, message = CASES[case]
    with pytest.raises(CorpusInputError, match=r"swords-bad_dev\.json: " + message):
        read(broken(tmp_path, change))


def test_not_json_names_the_line(tmp_path):
    path = tmp_path / "swords.json"
    path.write_text('{"contexts": {},\n "targets": {,}}')
    with pytest.raises(CorpusInputError, match=r"swords\.json, line 2: not valid JSON"):
        read(path)


@pytest.fixture(scope="module")
def swords_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("swords") / "atlas"
    build(out, "swords", swords=str(SWORDS))
    return out


def test_build_routes_targets_and_substitutes(swords_atlas):
    configs = Manifest.load(swords_atlas).configs()
    assert configs["swords-examples"]["rows"] == 6 and configs["swords-substitutions"]["rows"] == 21
    routing = read_config(swords_atlas, ROUTING).to_pandas()
    assert set(routing.corpus) == {"swords-examples", "swords-substitutions"}
    subs = {r["substitution_id"]: r for r in read_config(swords_atlas, "swords-substitutions").to_pylist()}
    for sid, tokens in routing[routing.corpus == "swords-substitutions"].groupby("source_id"):
        row = subs[sid]
        target = tokens[tokens.is_target]
        assert (
            len(target)
            and (target.char_start < row["target_end"]).all()
            and (target.char_end > row["target_start"]).all()
        )
    card = (swords_atlas / "README.md").read_text()
    assert "relation acceptable when score > 0.5" in card and "CC BY 3.0 US" in card


def test_validation_passes_and_catches_planted_defects(swords_atlas, tmp_path):
    report = validate(swords_atlas)
    assert report.passed, failures(report)
    out = copy_atlas(swords_atlas, tmp_path / "bad")

    def wrong_relation(rows):
        rejected = next(r for r in rows if r["relation"] == "rejected")
        rejected["relation"] = "acceptable"  # its score is 0
        return rows

    def text_drift(rows):
        rows[0]["text"] = rows[0]["text"][:-1] + "!"  # the text after the substitute no longer the base's
        return rows

    rewrite(out, "swords-substitutions", lambda rows: text_drift(wrong_relation(rows)))
    report = validate(out, hashes=False, tokenizers=False)
    checks = statuses(report, "swords-substitutions")
    assert checks["value-sets"] == "failed" and checks["references"] == "failed"
    assert statuses(report, "swords-examples")["target-span"] == "passed"


def test_bad_input_leaves_nothing_and_loads_no_model(tmp_path, monkeypatch):
    no_model(monkeypatch)
    bad = broken(tmp_path, _offset)
    out = tmp_path / "out"
    result = cli(
        "build", "--model", "tiny-deepseek-v3", "--corpus", "swords", "--swords", str(bad), "--out", str(out)
    )
    refused_cleanly(result, "error:", "swords-bad_dev.json", ".offset")
    assert not out.exists()


def test_metrics_measure_substitutions_per_relation(swords_atlas):
    from .byo import MODEL, kappa, last_target_experts, layer_mean_of_means, metrics_of

    metrics = metrics_of(swords_atlas)
    block = metrics["models"][MODEL]["corpora"]["swords"]
    assert block["sense_pairs"] is None and block["probe"] is None
    model = read_config(swords_atlas, "models").to_pylist()[0]
    base = last_target_experts(swords_atlas, "swords-examples")
    substituted = last_target_experts(swords_atlas, "swords-substitutions")
    by_relation: dict[str, list] = {}
    for row in read_config(swords_atlas, "swords-substitutions").to_pylist():
        by_relation.setdefault(row["relation"], []).append(
            kappa(
                base[row["example_id"]],
                substituted[row["substitution_id"]],
                model["top_k"],
                model["n_routed_experts"],
            )
        )
    sub = block["substitutions"]
    assert sub["n"] == {relation: len(values) for relation, values in by_relation.items()}
    for relation, values in by_relation.items():
        assert sub["layer_mean"][relation]["estimate"] == pytest.approx(layer_mean_of_means(values), abs=1e-9)
    expected = layer_mean_of_means(by_relation["acceptable"]) - layer_mean_of_means(by_relation["rejected"])
    assert sub["layer_mean"]["delta"]["estimate"] == pytest.approx(expected, abs=1e-9)
