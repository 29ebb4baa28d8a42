"""build_wordnet_corpora and corpus_counts, on the small corpora and once on all of WordNet."""

from __future__ import annotations

import time

from atlas_build.corpora import CORPUS_NOTES, build_wordnet_corpora, corpus_counts

from .conftest import SMALL_LEMMAS


def test_counts_of_small(small):
    counts = corpus_counts(small)
    assert counts["lemmas"] == SMALL_LEMMAS == sum(counts["lemmas_by_pos"].values())
    assert counts["examples"] == small["senses"].num_rows
    assert counts["pairs"]["same"] == counts["pairs"]["different"] > 0
    assert counts["pairs"]["total"] == small["sense-pairs"].num_rows
    subs = counts["substitutions"]
    assert subs["total"] == subs["synonym"] + subs["other-sense"] == small["substitutions"].num_rows
    assert all(isinstance(note, str) and note for note in CORPUS_NOTES)


def test_counts_of_empty_tables():
    counts = corpus_counts({})
    assert counts["examples"] == 0 and counts["pairs"]["total"] == 0 and counts["substitutions"]["total"] == 0


def test_full_wordnet(wordnet_dir):
    start = time.perf_counter()
    tables = build_wordnet_corpora(wordnet_dir)
    seconds = time.perf_counter() - start
    counts = corpus_counts(tables)
    print(f"full WordNet corpora in {seconds:.1f} s: {counts}")
    assert seconds < 120
    assert counts["lemmas"] > 10_000 and counts["examples"] > 30_000
    assert set(counts["lemmas_by_pos"]) == {"n", "v", "a", "r"}
    assert counts["pairs"]["same"] == counts["pairs"]["different"] > 5_000
    assert counts["substitutions"]["synonym"] > 10_000 and counts["substitutions"]["other-sense"] > 20_000
