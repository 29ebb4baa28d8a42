"""The text rules and tolerances validation applies (no atlas needed)."""

from __future__ import annotations

import pytest

from validation.rules import (
    WHITESPACE_CODEPOINTS,
    is_form_of,
    is_word_aligned,
    non_whitespace_prefix,
    weight_sum_rtol,
)


@pytest.mark.parametrize(
    ("form", "lemma", "ok"),
    [
        ("banks", "bank", True),
        ("Bank", "bank", True),
        ("ran", "run", True),
        ("mice", "mouse", True),
        ("went", "go", True),
        ("was", "be", True),
        ("better", "good", True),
        ("looked up", "look_up", True),
        ("well-known", "well_known", True),
        ("went out", "go_out", True),
        ("river", "bank", False),
        ("ctx0", "lemma00000", False),
        ("", "bank", False),
    ],
)
def test_form_of_lemma(form, lemma, ok):
    assert is_form_of(form, lemma) is ok


def test_word_alignment():
    text = "the bank's vault, riverbank"
    assert is_word_aligned(text, 4, 8)  # "bank" before "'s"
    assert not is_word_aligned(text, 4, 7)  # "ban"
    assert not is_word_aligned(text, text.index("riverbank") + 5, len(text))  # "bank" inside "riverbank"


def test_non_whitespace_prefix_counts_every_slice():
    texts = ["ab c", "", " x\u00a0y\u3000", "zz\n"]
    prefix, offsets = non_whitespace_prefix(texts)
    for text, offset in zip(texts, offsets, strict=True):
        for a in range(len(text) + 1):
            for b in range(a, len(text) + 1):
                assert prefix[offset + b] - prefix[offset + a] == sum(not c.isspace() for c in text[a:b])
    assert sorted(WHITESPACE_CODEPOINTS.tolist()) == [c for c in range(0x110000) if chr(c).isspace()]


def test_weight_sum_tolerance_is_the_looser_of_storage_and_compute():
    assert weight_sum_rtol("float16", "float32") == 1e-2
    assert weight_sum_rtol("float32", "float32") == 1e-4
    assert weight_sum_rtol("float32", "bfloat16") == 2e-2
    assert weight_sum_rtol("float16", "float8_e4m3fn") == 2e-2
