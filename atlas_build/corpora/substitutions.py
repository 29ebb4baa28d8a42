"""The `substitutions` config: SWORDS-like rewrites of the `senses` examples.

Each example of `senses` gives up to two rows, its target replaced by:

* ``synonym``: another single-word lemma of the example's own synset ("bank" -> "depository" ...);
* ``other-sense``: a lemma of another synset of the same (lemma, pos) that is neither the lemma itself
  nor a lemma of the example's synset (a word the lemma is confusable with, in a sense it does not have
  here). Multiword lemmas are used here, written with spaces, when no single word is available.

Inflection rule. The target's inflection is read off with WordNet's morphology: nouns are singular or
plural; verbs are base, 3rd person "-s", past ("-ed", simple past and participle alike) or "-ing";
adjectives and adverbs are base, comparative or superlative. A substitute gets the same inflection:
from WordNet's exception lists read in reverse when they give exactly one form of that kind ("run" ->
"ran", "goose" -> "geese"), else by the regular suffix rules ("-s"/"-es"/"-ies", "-ed"/"-d"/"-ied",
"-ing" with a silent "e" dropped), kept only if WordNet's morphology maps the result back to the
substitute. A noun that is itself a plural ("glasses") stays as it is. Multiword verbs inflect their
first word ("look into" -> "looked into"), multiword nouns their last. Substitutes that can be inflected
that way are preferred; when none can (e.g. "take" has two past forms, "took" and "taken", and an
adjective's regular comparative is not attempted), the base form is used. The first letter is
capitalised when the target's is. Known limits: "past" does not tell the simple past from the
participle (an irregular substitute with one listed past form gets it in both roles), and a verb whose
irregular forms WordNet does not list gets regular ones ("upset" -> "upseted").

Choices are deterministic: among the candidates (sorted), the one at a SHA-256 hash of
(seed, example_id, relation) modulo their number.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from atlas_build.atlas.schema import SUBSTITUTIONS_SCHEMA
from atlas_build.corpora.senses import Morphology, lemma_synsets, stable_hash
from atlas_build.corpora.wordnet import wordnet_version

SYNONYM = "synonym"
OTHER_SENSE = "other-sense"
RELATIONS = (SYNONYM, OTHER_SENSE)

BASE, PLURAL, THIRD_PERSON, PAST, GERUND = "base", "plural", "3sg", "past", "ing"
COMPARATIVE, SUPERLATIVE = "comparative", "superlative"

_VERB_THIRD_PERSON_SUFFIXES = ("s", "es", "ies")
_PRESENT_PLURAL = ("am", "are")  # "be" forms that take a base-form substitute ("they are" -> "they exist")


class Inflector:
    """Reads a form's inflection and gives a lemma the same one, with WordNet's morphology."""

    def __init__(self, wn: WordNetCorpusReader, morph: Morphology | None = None):
        self.wn = wn
        self.morph = morph or Morphology(wn)
        # base -> inflected forms, per pos, from the exception lists read in reverse.
        self._irregular: dict[str, dict[str, list[str]]] = {}
        for pos in ("n", "v", "a", "r"):
            reverse: dict[str, list[str]] = defaultdict(list)
            for form, bases in sorted(wn._exception_map[pos].items()):
                for base in bases:
                    reverse[base].append(form)
            self._irregular[pos] = dict(reverse)

    def _word_kind(self, word: str, base: str, pos: str) -> str:
        """The inflection of `word` (lower case) as a form of `base`."""
        if word == base or word in _PRESENT_PLURAL:
            return BASE
        if pos == "n":
            return PLURAL
        if pos in ("a", "r"):
            return SUPERLATIVE if word.endswith("st") else COMPARATIVE
        if word.endswith("ing"):
            return GERUND
        regular = [
            old
            for old, new in self.wn.MORPHOLOGICAL_SUBSTITUTIONS["v"]
            if word.endswith(old) and word[: -len(old)] + new == base
        ]
        if regular:
            return THIRD_PERSON if regular[0] in _VERB_THIRD_PERSON_SUFFIXES else PAST
        # Irregular: "-s" forms ("has", "is", "gasses") are 3rd person, all else is past ("ran", "was").
        return THIRD_PERSON if word.endswith("s") and word != "was" else PAST

    def kind(self, target_form: str, lemma: str, pos: str) -> str:
        """The inflection of `target_form` (the text of a match of `lemma`), e.g. ``"past"``."""
        parts = "_".join(target_form.lower().split()).split("_")
        words = lemma.split("_")
        if parts == words or len(parts) != len(words):
            return BASE
        if parts[1:] == words[1:]:  # single words, and collocations inflected on their first word
            return self._word_kind(parts[0], words[0], pos)
        return self._word_kind(parts[-1], words[-1], pos)

    def inflect(self, name: str, kind: str, pos: str) -> str | None:
        """`name` (a WordNet lemma name, '_' between words) in inflection `kind`, or None when unsure."""
        if kind == BASE:
            return name
        whole = self._inflect_word(name, kind, pos)
        if whole is not None or "_" not in name:
            return whole
        words = name.split("_")
        at = 0 if pos == "v" else len(words) - 1
        word = self._inflect_word(words[at], kind, pos)
        if word is None:
            return None
        words[at] = word
        inflected = "_".join(words)
        return inflected if self.morph.is_form_of(inflected.lower(), name.lower(), pos) else None

    def _inflect_word(self, word: str, kind: str, pos: str) -> str | None:
        lower = word.lower()
        irregular = [f for f in self._irregular[pos].get(lower, []) if self.kind(f, lower, pos) == kind]
        if len(irregular) == 1:
            return irregular[0]
        if irregular or "_" in word or kind in (COMPARATIVE, SUPERLATIVE):
            return None
        if kind == PLURAL and lower.endswith("s") and self.morph.bases(lower, pos) - {lower}:
            return word  # already a plural ("glasses", "compliments"): not "complimentses"
        if kind in (PLURAL, THIRD_PERSON):
            if lower.endswith(("s", "x", "z", "ch", "sh")):
                form = word + "es"
            elif lower.endswith("y") and lower[-2:-1] not in ("", *"aeiou"):
                form = word[:-1] + "ies"
            else:
                form = word + "s"
        elif kind == PAST:
            if lower.endswith("e"):
                form = word + "d"
            elif lower.endswith("y") and lower[-2:-1] not in ("", *"aeiou"):
                form = word[:-1] + "ied"
            else:
                form = word + "ed"
        elif kind == GERUND:
            if lower.endswith("ie"):
                form = word[:-2] + "ying"
            elif lower.endswith("e") and not lower.endswith(("ee", "ye", "oe")) and len(lower) > 2:
                form = word[:-1] + "ing"
            else:
                form = word + "ing"
        else:
            return None
        # Keep only forms WordNet's own morphology reads back as the word.
        return form if lower in self.morph.bases(form.lower(), pos) else None


def _pick(candidates: list[tuple[str, str]], *key: object) -> tuple[str, str]:
    return candidates[stable_hash(*key) % len(candidates)]


def build_substitutions(wn: WordNetCorpusReader, senses: pa.Table, seed: int = 0) -> pa.Table:
    """Build the `substitutions` table (:data:`SUBSTITUTIONS_SCHEMA`) from a `senses` table.

    Args:
        wn: the WordNet reader the `senses` table was built from.
        senses: the `senses` table.
        seed: choice seed; the same seed gives the same substitutes.

    Returns:
        Up to one ``synonym`` and one ``other-sense`` row per example, in `senses` order (synonym
        first); substitution_id is ``"{example_id}|{relation}"``, and ``text[target_start:target_end]``
        is the (inflected, capitalised) substitute as it appears in the new text.
    """
    source = f"wordnet-{wordnet_version(wn)}:substitution"
    inflector = Inflector(wn)
    synsets_of: dict[tuple[str, str], list] = {}
    rows = []
    for ex in senses.to_pylist():
        lemma, pos = ex["lemma"], ex["pos"]
        key = (lemma, pos)
        if key not in synsets_of:
            synsets_of[key] = lemma_synsets(wn, lemma, pos)
        own = wn.synset(ex["synset"])
        own_names = {name.lower() for name in own.lemma_names()}
        kind = inflector.kind(ex["target_form"], lemma, pos)

        synonyms = [
            (name, own.name()) for name in own.lemma_names() if name.lower() != lemma and "_" not in name
        ]
        others = [
            (name, synset.name())
            for synset in synsets_of[key]
            if synset != own
            for name in synset.lemma_names()
            if name.lower() not in own_names
        ]
        for relation, candidates in ((SYNONYM, synonyms), (OTHER_SENSE, others)):
            # One candidate per spelling (a name may recur across synsets), in a fixed order.
            unique = sorted({name.lower(): (name, synset) for name, synset in sorted(candidates)}.values())
            if not unique:
                continue
            inflected = {name: inflector.inflect(name, kind, pos) for name, _ in unique}
            tiers = (
                [c for c in unique if inflected[c[0]] is not None and "_" not in c[0]],
                [c for c in unique if inflected[c[0]] is not None],
                unique,
            )
            name, synset = _pick(
                next(t for t in tiers if t), "substitutions", seed, ex["example_id"], relation
            )
            surface = (inflected[name] or name).replace("_", " ")
            if ex["target_form"][:1].isupper():
                surface = surface[:1].upper() + surface[1:]
            text, start, end = ex["text"], ex["target_start"], ex["target_end"]
            rows.append(
                {
                    "substitution_id": f"{ex['example_id']}|{relation}",
                    "example_id": ex["example_id"],
                    "lemma": lemma,
                    "pos": pos,
                    "relation": relation,
                    "substitute": name,
                    "substitute_synset": synset,
                    "text": text[:start] + surface + text[end:],
                    "target_start": start,
                    "target_end": start + len(surface),
                    "source": source,
                }
            )
    return pa.Table.from_pylist(rows, schema=SUBSTITUTIONS_SCHEMA)
