"""The text corpora of an atlas, built from WordNet 3.0: `senses`, `sense-pairs` and `substitutions`.

>>> tables = build_wordnet_corpora(max_lemmas=50)  # doctest: +SKIP
>>> corpus_counts(tables)["examples"]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.schema import SENSE_PAIRS, SENSES, SUBSTITUTIONS
from atlas_build.corpora.pairs import build_sense_pairs
from atlas_build.corpora.senses import CORPUS_NOTES as _SENSES_NOTES
from atlas_build.corpora.senses import EmptyCorpusError, build_senses
from atlas_build.corpora.substitutions import RELATIONS, build_substitutions
from atlas_build.corpora.wordnet import (
    WordNetNotFoundError,
    describe_source,
    find_wordnet_dir,
    load_wordnet,
    wordnet_version,
)
from atlas_build.registry import Registry

__all__ = [
    "CORPUS_NOTES",
    "CUSTOM_CORPORA",
    "EmptyCorpusError",
    "WordNetNotFoundError",
    "build_sense_pairs",
    "build_senses",
    "build_substitutions",
    "build_wordnet_corpora",
    "corpus_counts",
    "describe_source",
    "find_wordnet_dir",
    "load_wordnet",
    "wordnet_version",
]

# The user's corpora (`atlas build --corpus KIND`): kind -> reader (`atlas_build.corpora.custom` has the contract).
CUSTOM_CORPORA = Registry(
    "corpus",
    {
        "wic": "atlas_build.corpora.wic:read",
        "swords": "atlas_build.corpora.swords:read",
        "jsonl": "atlas_build.corpora.jsonl:read",
        "text": "atlas_build.corpora.text:read",
    },
)

# For the dataset card: how the corpora were made, one statement per entry.
CORPUS_NOTES = [
    *_SENSES_NOTES,
    "sense-pairs: for each lemma with examples of 2 or more senses, an equal number of same-sense and "
    "different-sense example pairs (at most 10 of each), sampled with a fixed seed; lemmas whose senses "
    "have one example each give no pair.",
    "substitutions: each example with its target replaced by a single-word synonym from its synset "
    "(relation 'synonym') and by a lemma of another synset of the same word that is not in the example's "
    "synset (relation 'other-sense'), inflected like the target when WordNet's exception lists or the "
    "regular suffix rules allow, else in its base form.",
    "Small corpora (--max-lemmas N) keep N lemmas with examples of 2 or more senses, those with a "
    "same-sense pair first, in a fixed hash order spread over the alphabet.",
]


def build_wordnet_corpora(
    wordnet_dir: str | Path | None = None, max_lemmas: int | None = None, seed: int = 0
) -> dict[str, pa.Table]:
    """Build the three WordNet corpora.

    Args:
        wordnet_dir: WordNet location (see :func:`find_wordnet_dir`); None auto-detects.
        max_lemmas: keep at most this many (lemma, pos) groups (see :func:`build_senses`); None: all.
        seed: sampling seed of the pairs and the substitutes.

    Returns:
        ``{"senses": ..., "sense-pairs": ..., "substitutions": ...}``, each with its schema from
        :mod:`atlas_build.atlas.schema`.

    Raises:
        WordNetNotFoundError: no WordNet found.
        EmptyCorpusError: the filters left no example.
    """
    wn = load_wordnet(wordnet_dir)
    senses = build_senses(wn, max_lemmas=max_lemmas)
    return {
        SENSES: senses,
        SENSE_PAIRS: build_sense_pairs(senses, seed=seed),
        SUBSTITUTIONS: build_substitutions(wn, senses, seed=seed),
    }


def corpus_counts(tables: dict[str, pa.Table]) -> dict:
    """Sizes of the corpora, for the dataset card.

    Returns:
        ``{"lemmas": int, "lemmas_by_pos": {pos: int}, "synsets": int, "examples": int,
        "pairs": {"total", "same", "different"}, "pair_lemmas": int,
        "substitutions": {"total", "synonym", "other-sense"}}``; a missing table counts as empty.
    """
    senses = tables.get(SENSES)
    pairs = tables.get(SENSE_PAIRS)
    subs = tables.get(SUBSTITUTIONS)
    counts: dict = {"lemmas": 0, "lemmas_by_pos": {}, "synsets": 0, "examples": 0}
    if senses is not None and senses.num_rows:
        groups = senses.group_by(["lemma", "pos"]).aggregate([]).column("pos").to_pylist()
        counts["lemmas"] = len(groups)
        counts["lemmas_by_pos"] = {pos: groups.count(pos) for pos in sorted(set(groups))}
        counts["synsets"] = len(pc.unique(senses.column("synset")))
        counts["examples"] = senses.num_rows
    n_pairs = pairs.num_rows if pairs is not None else 0
    n_same = int(pc.sum(pairs.column("same_sense")).as_py() or 0) if n_pairs else 0
    counts["pairs"] = {"total": n_pairs, "same": n_same, "different": n_pairs - n_same}
    counts["pair_lemmas"] = (
        len(pairs.group_by(["lemma", "pos"]).aggregate([])) if pairs is not None and pairs.num_rows else 0
    )
    relations = subs.column("relation").to_pylist() if subs is not None else []
    counts["substitutions"] = {"total": len(relations), **{r: relations.count(r) for r in RELATIONS}}
    return counts
