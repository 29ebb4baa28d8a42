"""Reasoning markers: the words and phrases with which a reasoning model hesitates, checks or changes course.

The lexicon below is what labels the `marker` column of trace tokens. Matching rules:

- case-insensitive, on word boundaries: "Wait," and "wait." match `wait`, "awaits" and "waiting" do not;
- a multi-word marker matches with any run of whitespace between its words ("let me\\ncheck"), and a
  hyphenated one also without the hyphen or with a space ("double-check", "double check", "doublecheck");
- listed inflections only (`verify` also matches "verifies", "verified", "verifying");
- matches never overlap: at each position the longest marker wins ("on second thought" is one marker,
  not "so"...), then the search goes on after it;
- a match yields the character span of the whole phrase, so every token of "let me check" carries the
  marker `let me check` (`build.span_labels` labels a token by overlap).

Markers are matched inside the trace's segments only (prompt, think, answer), never in the chat-template
markup around them; metrics usually keep `segment == "think"`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# name -> regular expression (lower-case, matched with re.IGNORECASE). The name is what the `marker`
# column holds. Grouped by the role the seed study (arXiv 2502.10928) and R1's own traces give them.
LEXICON: dict[str, str] = {
    # hesitation and self-interruption
    "wait": r"wait",
    "hmm": r"h+m{2,}|hm",
    "actually": r"actually",
    "on second thought": r"on\s+second\s+thoughts?",
    # switching strategy
    "alternatively": r"alternatively",
    "instead": r"instead",
    "however": r"however",
    "but": r"but",
    # hypothesising
    "perhaps": r"perhaps",
    "maybe": r"maybe",
    "hypothesis": r"hypothes[ie]s|hypothesi[sz]e[ds]?|hypothesi[sz]ing",
    "let me think": r"let\s+me\s+think",
    "let me try": r"let\s+me\s+try",
    # checking
    "let me check": r"let\s+me\s+(?:re-?)?check",
    "verify": r"verif(?:y|ies|ied|ying|ication)",
    "double-check": r"double[-\s]?check(?:s|ed|ing)?",
    # concluding
    "so": r"so",
    "therefore": r"therefore",
    "thus": r"thus",
}


MARKER_NAMES: tuple[str, ...] = tuple(LEXICON)
# Alternation takes the first alternative that matches at a position: longest name first, so that a
# longer phrase wins over a shorter one starting at the same character.
_ORDER = tuple(sorted(LEXICON, key=lambda name: (-len(name), name)))
_PATTERN = re.compile(
    r"(?<!\w)(?:" + "|".join(f"(?P<m{i}>{LEXICON[name]})" for i, name in enumerate(_ORDER)) + r")(?!\w)",
    re.IGNORECASE,
)


def find_markers(text: str, spans: Iterable[tuple[int, int]] | None = None) -> list[tuple[str, int, int]]:
    """Reasoning markers in `text`, as `(marker, start, end)` character spans (end exclusive), in order.

    Args:
        text: the text to search.
        spans: `(start, end)` regions of `text` to search (e.g. the trace's segments); a match never
            crosses a region's edge. None searches the whole text.
    """
    regions = [(0, len(text))] if spans is None else sorted(spans)
    found: list[tuple[str, int, int]] = []
    for start, end in regions:
        if end <= start:
            continue
        # Searching the region itself (not the whole text with pos/endpos) keeps the word-boundary checks
        # inside the region: a region starting mid-word still matches at its edge, as the segment does.
        for match in _PATTERN.finditer(text[start:end]):
            group = match.lastgroup
            assert group is not None
            found.append((_ORDER[int(group[1:])], start + match.start(), start + match.end()))
    return found


__all__ = ["LEXICON", "MARKER_NAMES", "find_markers"]
