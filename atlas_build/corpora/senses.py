"""The `senses` config: WordNet's example sentences of polysemous lemmas, with the lemma located.

A (lemma, pos) is polysemous when the lemma has two or more synsets in that part of speech (adjective
satellites count as adjectives, pos ``a``). Every example sentence of each of its synsets
(``synset.examples()``) in which a form of the lemma occurs gives one row; the target span is its first
occurrence. Sentences that paraphrase the lemma away ("he sat on the edge of the river") are dropped.

Matching uses WordNet's own morphology (nltk's ``_morphy``: the exception lists, then the detachment
rules, keeping bases that are WordNet lemmas of that pos), word by word, never prefixes: "banks" and
"Banks" are forms of *bank*, "banker" is not; "geese" is a form of *goose* and "ran" of *run*. Words are
runs of letters and digits joined by apostrophes or hyphens; a possessive "'s" is not part of the target.

Multiword lemmas (``kick_the_bucket``, ``attorney_general``) are matched as a sequence of words separated
by white space, with either the whole collocation in a form morphy knows (an exception-list entry such as
``amici curiae``, or the last word inflected: ``bank accounts``) or the first word inflected and the rest
verbatim (``kicked the bucket``, ``attorneys general``), as WordNet's own morphy does for collocations.

A lemma's senses are its own synsets in WordNet's index order (``lemma_synsets``), not all of
``wn.synsets(lemma)``, which also returns the synsets of morphy's other readings of the string.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from atlas_build.atlas.schema import SENSES_SCHEMA
from atlas_build.corpora.wordnet import wordnet_version
from atlas_build.errors import AtlasError

POS_TAGS = ("n", "v", "a", "r")  # WordNet's parts of speech; satellites ('s') are read as 'a'

# A word: letters/digits, possibly joined by apostrophes or hyphens ("o'clock", "well-known").
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_POSSESSIVE = ("'s", "’s")

CORPUS_NOTES = [
    "senses: one row per WordNet 3.0 example sentence (synset.examples()) of a polysemous lemma "
    "(2 or more synsets in its part of speech; adjective satellites count as adjectives) in which a form "
    "of the lemma occurs; sentences that do not contain the lemma are dropped.",
    "The target is the lemma's first occurrence, found with WordNet's own morphology (its exception lists "
    "and suffix rules, as nltk's morphy applies them), word by word: 'banks' is a form of bank, 'banker' "
    "is not; a possessive 's is left out of the span.",
    "Multiword lemmas are included: matched as whitespace-separated words, with the last word inflected "
    "('bank accounts', or an exception-list form such as 'amici curiae') or the first word inflected "
    "('kicked the bucket', 'attorneys general').",
    "sense_number is the synset's rank among the lemma's synsets in WordNet's index order (most frequent "
    "sense first, from SemCor counts); lemma_n_senses counts all synsets of the lemma in that pos, "
    "including those without a usable example.",
]


class EmptyCorpusError(ValueError, AtlasError):
    """The corpus filters left no example (the message names the filter)."""


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Words of `text` with character offsets: ``[(word, start, end)]``, end exclusive."""
    return [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]


class Morphology:
    """WordNet's morphology over one reader, with memoised lookups.

    ``bases(form, pos)`` are the base forms nltk's morphy gives for a lower-cased word (the form itself
    when it is a lemma, an exception-list entry, or the result of a suffix rule), restricted to lemmas of
    `pos`.
    """

    def __init__(self, wn: WordNetCorpusReader):
        self.wn = wn
        self._bases: dict[tuple[str, str], frozenset[str]] = {}

    def bases(self, form: str, pos: str) -> frozenset[str]:
        key = (form, pos)
        found = self._bases.get(key)
        if found is None:
            found = frozenset(self.wn._morphy(form, pos, check_exceptions=True))
            self._bases[key] = found
        return found

    def is_form_of(self, form: str, lemma: str, pos: str) -> bool:
        """Whether the lower-cased `form` ('_' between words) is `lemma` or an inflection of it."""
        if form == lemma or lemma in self.bases(form, pos):
            return True
        words = lemma.split("_")
        if len(words) > 1:
            # First word inflected, the rest verbatim ("kicked_the_bucket"): nltk's morphy only
            # inflects the end of a collocation, WordNet's own morphy also the first word.
            parts = form.split("_")
            return (
                len(parts) == len(words) and parts[1:] == words[1:] and words[0] in self.bases(parts[0], pos)
            )
        return False

    def find_target(self, text: str, lemma: str, pos: str) -> tuple[int, int] | None:
        """Character span ``(start, end)`` of the first form of `lemma` in `text`, or None."""
        tokens = tokenize(text)
        n_words = lemma.count("_") + 1
        for i in range(len(tokens) - n_words + 1):
            window = tokens[i : i + n_words]
            # Words of a collocation are separated by white space only ("bank, account" is no match).
            if any(text[a[2] : b[1]].strip() for a, b in zip(window, window[1:], strict=False)):
                continue
            start, end = window[0][1], window[-1][2]
            form = "_".join(w[0].lower() for w in window)
            if self.is_form_of(form, lemma, pos):
                return start, end
            for mark in _POSSESSIVE:
                if form.endswith(mark) and self.is_form_of(form[: -len(mark)], lemma, pos):
                    return start, end - len(mark)
        return None


def lemma_synsets(wn: WordNetCorpusReader, lemma: str, pos: str) -> list:
    """The synsets of exactly `lemma` in `pos`, in WordNet's sense order (satellites included in 'a').

    ``wn.synsets(lemma, pos)`` also returns the synsets of morphy's other readings of the string
    ("glasses" gives glass's synsets too); those are left out.
    """
    found, seen = [], set()
    for synset in wn.synsets(lemma, pos):
        if synset not in seen and any(name.lower() == lemma for name in synset.lemma_names()):
            seen.add(synset)
            found.append(synset)
    return found


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of `parts` that is the same in every process (Python's hash() is salted)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _polysemous_lemmas(wn: WordNetCorpusReader) -> Iterable[tuple[str, str]]:
    """(lemma, pos) with 2 or more synsets, by the index alone (loading every synset is slow)."""
    index = wn._lemma_pos_offset_map  # lemma -> pos -> synset offsets, from index.<pos>
    for pos in POS_TAGS:
        for lemma in sorted(wn.all_lemma_names(pos)):
            if len(index[lemma][pos]) >= 2:
                yield lemma, pos


def build_senses(wn: WordNetCorpusReader, max_lemmas: int | None = None, progress: bool = False) -> pa.Table:
    """Build the `senses` table (:data:`SENSES_SCHEMA`), sorted by lemma, pos, sense_number, example.

    Args:
        wn: a WordNet reader (see :func:`atlas_build.corpora.wordnet.load_wordnet`).
        max_lemmas: keep at most this many (lemma, pos) groups, the first of :func:`lemma_order` (groups
            with examples of two or more senses and a same-sense pair first; within each tier a fixed hash
            of "lemma.pos", which spreads the choice over the alphabet and the parts of speech). None keeps
            every group.
        progress: show a progress bar over the polysemous lemmas (the scan takes seconds).

    Returns:
        One row per (lemma, synset, example sentence) where the sentence contains the lemma; example_id
        is ``"{lemma}.{pos}|{synset}|{example_index}"``.

    Raises:
        EmptyCorpusError: `max_lemmas` (or an empty database) leaves no example.
    """
    if max_lemmas is not None and max_lemmas < 0:
        raise ValueError(f"max_lemmas must be >= 0 or None, got {max_lemmas}")
    if max_lemmas == 0:
        raise EmptyCorpusError("max_lemmas=0 keeps no lemma: the senses corpus would be empty")
    source = f"wordnet-{wordnet_version(wn)}:example"
    morph = Morphology(wn)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    lemmas = _polysemous_lemmas(wn)
    if progress:
        from tqdm.auto import tqdm

        lemmas = tqdm(list(lemmas), unit="lemma", desc="WordNet senses", leave=False)
    for lemma, pos in lemmas:
        synsets = lemma_synsets(wn, lemma, pos)
        if len(synsets) < 2:
            continue
        for rank, synset in enumerate(synsets, start=1):
            examples = synset.examples()
            if not examples:
                continue
            sense_key = next(lem.key() for lem in synset.lemmas() if lem.name().lower() == lemma)
            for index, text in enumerate(examples):
                span = morph.find_target(text, lemma, pos)
                if span is None:
                    continue
                start, end = span
                groups[(lemma, pos)].append(
                    {
                        "example_id": f"{lemma}.{pos}|{synset.name()}|{index}",
                        "lemma": lemma,
                        "pos": pos,
                        "synset": synset.name(),
                        "sense_key": sense_key,
                        "sense_number": rank,
                        "lemma_n_senses": len(synsets),
                        "lexname": synset.lexname(),
                        "gloss": synset.definition(),
                        "text": text,
                        "target_start": start,
                        "target_end": end,
                        "target_form": text[start:end],
                        "source": source,
                    }
                )

    keys = sorted(groups)
    if max_lemmas is not None:
        keys = sorted(_select_groups(groups, max_lemmas))
    rows = [row for key in keys for row in groups[key]]  # already in sense/example order per group
    if not rows:
        why = f"max_lemmas={max_lemmas}" if max_lemmas is not None else "the polysemy and lemma-match filters"
        raise EmptyCorpusError(f"no WordNet example sentence is left after {why}; the senses corpus is empty")
    return pa.Table.from_pylist(rows, schema=SENSES_SCHEMA)


def lemma_order(groups: dict[tuple[str, str], list[dict]]) -> list[tuple[str, str]]:
    """Every (lemma, pos) group in the order small corpora take them: `--max-lemmas N` keeps the first N,
    and N >= len(groups) keeps them all, as no `--max-lemmas` does.

    Tiers: examples of 2 or more senses with a same-sense pair (a sense with two examples), then examples
    of 2 or more senses, then examples of one sense only; within a tier a fixed hash of "lemma.pos".
    """
    ranked = []
    for (lemma, pos), rows in groups.items():
        per_sense: dict[str, int] = defaultdict(int)
        for row in rows:
            per_sense[row["synset"]] += 1
        tier = 2 if len(per_sense) < 2 else 0 if max(per_sense.values()) >= 2 else 1
        ranked.append((tier, stable_hash(lemma, pos), lemma, pos))
    ranked.sort()
    return [(lemma, pos) for _, _, lemma, pos in ranked]


def _select_groups(groups: dict[tuple[str, str], list[dict]], max_lemmas: int) -> list[tuple[str, str]]:
    """The `max_lemmas` (lemma, pos) groups a small corpus keeps (see :func:`lemma_order`)."""
    return lemma_order(groups)[:max_lemmas]
