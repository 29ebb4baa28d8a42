"""The senses corpus: morphology, row invariants, lemma selection, determinism, empty filters."""

from __future__ import annotations

import pytest

from atlas_build.atlas.schema import SENSES_SCHEMA
from atlas_build.corpora import EmptyCorpusError, build_wordnet_corpora
from atlas_build.corpora.senses import Morphology, build_senses, lemma_synsets, tokenize

from .conftest import SMALL_LEMMAS


@pytest.fixture(scope="module")
def morph(wn):
    return Morphology(wn)


@pytest.mark.parametrize(
    ("form", "lemma", "pos", "expected"),
    [
        ("banks", "bank", "n", True),
        ("bank", "bank", "n", True),
        ("banker", "bank", "n", False),
        ("bankers", "bank", "n", False),
        ("geese", "goose", "n", True),  # noun.exc
        ("ran", "run", "v", True),  # verb.exc
        ("running", "run", "v", True),
        ("runner", "run", "v", False),
        ("better", "good", "a", True),  # adj.exc
        ("attorneys_general", "attorney_general", "n", True),  # first word inflected
        ("bank_accounts", "bank_account", "n", True),  # last word inflected
        ("kicked_the_bucket", "kick_the_bucket", "v", True),
        ("kicked_a_bucket", "kick_the_bucket", "v", False),
    ],
)
def test_morphology(morph, form, lemma, pos, expected):
    assert morph.is_form_of(form, lemma, pos) is expected


def test_find_target(morph):
    assert morph.find_target("The Banks closed early", "bank", "n") == (4, 9)
    assert morph.find_target("the banker and the bank", "bank", "n") == (19, 23)  # not "banker"
    assert morph.find_target("the banker smiled", "bank", "n") is None
    assert morph.find_target("the bank's lawyer", "bank", "n") == (4, 8)  # possessive left out
    assert morph.find_target("she ran home", "run", "v") == (4, 7)
    text = "the old man finally kicked the bucket"
    start, end = morph.find_target(text, "kick_the_bucket", "v")
    assert text[start:end] == "kicked the bucket"
    assert morph.find_target("kicked, the bucket", "kick_the_bucket", "v") is None


def test_tokenize_keeps_apostrophes_and_hyphens():
    assert [w for w, _, _ in tokenize("a well-known o'clock train, isn't it?")] == [
        "a",
        "well-known",
        "o'clock",
        "train",
        "isn't",
        "it",
    ]


def test_senses_rows(wn, morph, small):
    senses = small["senses"]
    assert senses.schema == SENSES_SCHEMA
    rows = senses.to_pylist()
    assert len({r["example_id"] for r in rows}) == len(rows)
    synsets_of = {}
    for r in rows:
        text, start, end = r["text"], r["target_start"], r["target_end"]
        assert text[start:end] == r["target_form"]
        form = "_".join(r["target_form"].lower().split())
        assert morph.is_form_of(form, r["lemma"], r["pos"]), r
        if "_" not in r["lemma"]:  # single words: literally nltk's morphy
            assert form == r["lemma"] or r["lemma"] in wn._morphy(form, r["pos"])
        key = (r["lemma"], r["pos"])
        if key not in synsets_of:
            synsets_of[key] = lemma_synsets(wn, *key)
        synsets = synsets_of[key]
        assert len(synsets) >= 2 and r["lemma_n_senses"] == len(synsets)
        synset = synsets[r["sense_number"] - 1]
        assert synset.name() == r["synset"]
        assert r["pos"] == ("a" if synset.pos() == "s" else synset.pos())
        assert wn.lemma_from_key(r["sense_key"]).synset() == synset  # reads index.sense
        assert r["gloss"] == synset.definition() and r["lexname"] == synset.lexname()
        assert text in synset.examples()
        assert r["example_id"] == f"{r['lemma']}.{r['pos']}|{r['synset']}|{synset.examples().index(text)}"
        assert r["source"] == "wordnet-3.0:example"
    keys = [(r["lemma"], r["pos"], r["sense_number"], r["example_id"]) for r in rows]
    assert keys == sorted(keys)


def test_max_lemmas_selection(small):
    rows = small["senses"].to_pylist()
    groups = {(r["lemma"], r["pos"]) for r in rows}
    assert len(groups) == SMALL_LEMMAS
    for group in groups:
        assert len({r["synset"] for r in rows if (r["lemma"], r["pos"]) == group}) >= 2
    # Spread over the alphabet, not the first lemmas in "a".
    assert len({lemma[0] for lemma, _ in groups}) >= 10


def test_determinism(wordnet_dir, small):
    again = build_wordnet_corpora(wordnet_dir, max_lemmas=SMALL_LEMMAS, seed=0)
    assert again.keys() == small.keys()
    for name, table in small.items():
        assert again[name].equals(table), name


def test_empty_corpus_error(wordnet_dir, wn):
    with pytest.raises(EmptyCorpusError, match="max_lemmas=0"):
        build_wordnet_corpora(wordnet_dir, max_lemmas=0)
    assert issubclass(EmptyCorpusError, ValueError)
    with pytest.raises(ValueError, match="max_lemmas"):
        build_senses(wn, max_lemmas=-1)
