"""The reasoning-marker lexicon: case, word boundaries, multi-word phrases, longest match, regions."""

from __future__ import annotations

import pytest

from atlas_build.corpora.markers import LEXICON, MARKER_NAMES, find_markers


def names(text, spans=None):
    return [(name, text[start:end]) for name, start, end in find_markers(text, spans)]


def test_case_insensitive_on_word_boundaries():
    assert names("Wait, WAIT. wait") == [("wait", "Wait"), ("wait", "WAIT"), ("wait", "wait")]
    assert names("awaits waiting await wait_for butter sofa") == []


def test_multi_word_markers_span_the_whole_phrase():
    text = "OK. Let me\n  check: on second thoughts, let me think."
    assert names(text) == [
        ("let me check", "Let me\n  check"),
        ("on second thought", "on second thoughts"),
        ("let me think", "let me think"),
    ]


@pytest.mark.parametrize(
    ("text", "marker"),
    [
        ("double-check", "double-check"),
        ("Double check", "double-check"),
        ("double-checked", "double-check"),
        ("hmm", "hmm"),
        ("Hmmm", "hmm"),
        ("verified", "verify"),
        ("verifying", "verify"),
        ("hypotheses", "hypothesis"),
        ("Alternatively", "alternatively"),
        ("let me re-check", "let me check"),
    ],
)
def test_variants(text, marker):
    assert [n for n, *_ in find_markers(text)] == [marker]


def test_every_marker_matches_its_own_name():
    for name in MARKER_NAMES:
        assert [n for n, *_ in find_markers(f"x {name} y")] == [name], name
    assert set(LEXICON) == set(MARKER_NAMES)


def test_regions_limit_the_search_and_offsets_are_absolute():
    text = "But wait. So then, perhaps."
    assert find_markers(text, [(4, 9), (10, 12)]) == [("wait", 4, 8), ("so", 10, 12)]
    assert find_markers(text, [(5, 5)]) == []
    # A phrase cut by a region's edge does not match.
    assert find_markers("let me check", [(0, 6)]) == []
