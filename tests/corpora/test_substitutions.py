"""The substitutions corpus: spans, relations, inflection."""

from __future__ import annotations

import pytest

from atlas_build.atlas.schema import SUBSTITUTIONS_SCHEMA
from atlas_build.corpora.senses import Morphology, lemma_synsets
from atlas_build.corpora.substitutions import Inflector


@pytest.fixture(scope="module")
def inflector(wn):
    return Inflector(wn)


@pytest.mark.parametrize(
    ("name", "kind", "pos", "expected"),
    [
        ("bank", "plural", "n", "banks"),
        ("church", "plural", "n", "churches"),
        ("goose", "plural", "n", "geese"),  # noun.exc in reverse
        ("glasses", "plural", "n", "glasses"),  # already plural
        ("run", "past", "v", "ran"),
        ("take", "past", "v", None),  # took / taken: ambiguous
        ("bake", "past", "v", "baked"),
        ("stop", "ing", "v", "stopping"),  # verb.exc
        ("bake", "ing", "v", "baking"),
        ("die", "ing", "v", "dying"),
        ("cry", "3sg", "v", "cries"),
        ("have", "3sg", "v", "has"),
        ("look_into", "past", "v", "looked_into"),  # multiword verbs: first word
        ("bank_account", "plural", "n", "bank_accounts"),  # multiword nouns: last word
        ("good", "comparative", "a", "better"),
        ("fast", "comparative", "a", None),  # regular comparatives are not attempted
        ("bank", "base", "n", "bank"),
    ],
)
def test_inflect(inflector, name, kind, pos, expected):
    assert inflector.inflect(name, kind, pos) == expected


@pytest.mark.parametrize(
    ("form", "lemma", "pos", "expected"),
    [
        ("banks", "bank", "n", "plural"),
        ("geese", "goose", "n", "plural"),
        ("Ran", "run", "v", "past"),
        ("banked", "bank", "v", "past"),
        ("running", "run", "v", "ing"),
        ("uses", "use", "v", "3sg"),
        ("is", "be", "v", "3sg"),
        ("was", "be", "v", "past"),
        ("are", "be", "v", "base"),
        ("kicked the bucket", "kick_the_bucket", "v", "past"),
        ("best", "good", "a", "superlative"),
        ("Bank", "bank", "n", "base"),
    ],
)
def test_kind(inflector, form, lemma, pos, expected):
    assert inflector.kind(form, lemma, pos) == expected


def test_substitution_rows(wn, small):
    subs, senses = small["substitutions"], small["senses"]
    assert subs.schema == SUBSTITUTIONS_SCHEMA
    examples = {r["example_id"]: r for r in senses.to_pylist()}
    morph = Morphology(wn)
    rows = subs.to_pylist()
    assert len({r["substitution_id"] for r in rows}) == len(rows)
    assert {r["relation"] for r in rows} == {"synonym", "other-sense"}
    for r in rows:
        ex = examples[r["example_id"]]
        assert r["substitution_id"] == f"{r['example_id']}|{r['relation']}"
        assert (r["lemma"], r["pos"]) == (ex["lemma"], ex["pos"])
        start, end = r["target_start"], r["target_end"]
        # Only the target changed; the span holds the substitute, in some form of it.
        assert r["text"][:start] == ex["text"][: ex["target_start"]]
        assert r["text"][end:] == ex["text"][ex["target_end"] :]
        surface = "_".join(r["text"][start:end].lower().split())
        assert (
            morph.is_form_of(surface, r["substitute"].lower(), r["pos"]) or surface == r["substitute"].lower()
        )
        if ex["target_form"][0].isupper():
            assert r["text"][start].isupper()
        own = wn.synset(ex["synset"])
        assert r["substitute"] in wn.synset(r["substitute_synset"]).lemma_names()
        assert r["substitute"].lower() != r["lemma"]
        if r["relation"] == "synonym":
            assert r["substitute_synset"] == ex["synset"]
            assert "_" not in r["substitute"]
        else:
            assert r["substitute_synset"] != ex["synset"]
            assert r["substitute"].lower() not in {n.lower() for n in own.lemma_names()}
            assert wn.synset(r["substitute_synset"]) in lemma_synsets(wn, r["lemma"], r["pos"])
    # Every example of a lemma with 2 or more senses has some other-sense lemma to use (or none is left
    # because all other synsets share the example synset's lemmas); most examples get one.
    assert sum(r["relation"] == "other-sense" for r in rows) >= 0.7 * senses.num_rows


def test_substitution_order_follows_senses(small):
    ids = small["senses"].column("example_id").to_pylist()
    position = {example_id: i for i, example_id in enumerate(ids)}
    rows = small["substitutions"].to_pylist()
    keys = [(position[r["example_id"]], r["relation"] != "synonym") for r in rows]
    assert keys == sorted(keys)
