"""`--max-lemmas N` keeps the first N lemmas of one fixed order over all of them, and says how many it kept.

Before issue 12 only lemmas with examples of two or more senses could be selected (6,910), so no value of
`--max-lemmas` gave the 12,475 lemmas that leaving it out gives. The full senses corpus is scanned once
per WordNet install and cached; small corpora are selected from it.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("requires_wordnet")


@pytest.fixture(scope="module")
def full_senses():
    from atlas_build.corpora import cached_senses, find_wordnet_dir, load_wordnet

    location = find_wordnet_dir()
    return cached_senses(load_wordnet(location), location)


def groups_of(table) -> list[tuple[str, str]]:
    return sorted(set(zip(table.column("lemma").to_pylist(), table.column("pos").to_pylist(), strict=True)))


def test_every_size_is_a_prefix_of_one_order_and_the_largest_is_all(full_senses):
    from atlas_build.corpora import select_lemmas

    total = len(groups_of(full_senses))
    assert total == 12475  # WordNet 3.0: polysemous (lemma, pos) with a usable example
    kept = {}
    for n in (5, 50, 500):
        table, n_kept, n_total = select_lemmas(full_senses, n)
        assert (n_kept, n_total) == (n, total) and len(groups_of(table)) == n
        kept[n] = set(groups_of(table))
    assert kept[5] < kept[50] < kept[500]  # a larger corpus extends a smaller one
    for n in (total, total + 1, 10**9, None):
        table, n_kept, _ = select_lemmas(full_senses, n)
        assert n_kept == total and table.equals(full_senses)


def test_small_corpora_take_pairable_lemmas_first(full_senses):
    """The first tier: examples of two or more senses, one sense with two examples (a same-sense pair)."""
    from collections import Counter

    from atlas_build.corpora import select_lemmas

    table, _, _ = select_lemmas(full_senses, 200)
    per_group: dict[tuple[str, str], Counter] = {}
    for lemma, pos, synset in zip(
        *(table.column(c).to_pylist() for c in ("lemma", "pos", "synset")), strict=True
    ):
        per_group.setdefault((lemma, pos), Counter())[synset] += 1
    assert all(len(c) >= 2 and max(c.values()) >= 2 for c in per_group.values())


def test_the_build_says_how_many_lemmas_it_kept():
    from atlas_build.corpora import build_wordnet_corpora

    lines: list[str] = []
    tables = build_wordnet_corpora(max_lemmas=3, seed=0, log=lines.append)
    assert lines == [
        "WordNet corpora: 3 of 12,475 polysemous lemmas with examples (--max-lemmas 3; leave it out for all 12,475)"
    ]
    assert len(groups_of(tables["senses"])) == 3
