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
    REQUIRED_FILES,
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
    "cached_senses",
    "select_lemmas",
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
    "Small corpora (--max-lemmas N) keep the first N lemmas of one fixed order over all of them: lemmas "
    "with examples of 2 or more senses and a same-sense pair first, then those with examples of 2 or more "
    "senses, then those with examples of one sense, each tier in a fixed hash order spread over the "
    "alphabet; without --max-lemmas (or with N at least the number of lemmas) every lemma is kept.",
]

# Bump when the senses corpus that `build_senses` makes changes, so cached copies are rebuilt.
SENSES_CACHE_VERSION = 1


def build_wordnet_corpora(
    wordnet_dir: str | Path | None = None,
    max_lemmas: int | None = None,
    seed: int = 0,
    progress: bool = False,
    log=None,
) -> dict[str, pa.Table]:
    """Build the three WordNet corpora.

    The full senses corpus (every lemma; a scan of all of WordNet, ~10 s) is built once per WordNet
    install and cached (`cached_senses`); a corpus of `max_lemmas` lemmas is its first `max_lemmas` of
    :func:`~atlas_build.corpora.senses.lemma_order`, so a small build starts in seconds.

    Args:
        wordnet_dir: WordNet location (see :func:`find_wordnet_dir`); None auto-detects.
        max_lemmas: keep the first this many (lemma, pos) groups of the fixed order; None: all.
        seed: sampling seed of the pairs and the substitutes.
        progress: progress bar while the full corpus is scanned (first build on this WordNet).
        log: `log(line)` for how many lemmas were kept (None: silent).

    Returns:
        ``{"senses": ..., "sense-pairs": ..., "substitutions": ...}``, each with its schema from
        :mod:`atlas_build.atlas.schema`.

    Raises:
        WordNetNotFoundError: no WordNet found.
        EmptyCorpusError: the filters left no example.
    """
    if max_lemmas is not None and max_lemmas < 1:
        raise EmptyCorpusError(f"max_lemmas={max_lemmas} keeps no lemma: the senses corpus would be empty")
    location = find_wordnet_dir(wordnet_dir)
    wn = load_wordnet(location)
    full = cached_senses(wn, location, progress)
    senses, kept, total = select_lemmas(full, max_lemmas)
    if log is not None:
        how = (
            f"--max-lemmas {max_lemmas}; leave it out for all {total:,}"
            if max_lemmas is not None and kept < total
            else "all of them"
        )
        log(f"WordNet corpora: {kept:,} of {total:,} polysemous lemmas with examples ({how})")
    return {
        SENSES: senses,
        SENSE_PAIRS: build_sense_pairs(senses, seed=seed),
        SUBSTITUTIONS: build_substitutions(wn, senses, seed=seed),
    }


def select_lemmas(full: pa.Table, max_lemmas: int | None) -> tuple[pa.Table, int, int]:
    """The rows of the first `max_lemmas` groups of `lemma_order` (all when None), in the table's order.

    Returns:
        `(senses, lemmas kept, lemmas in all)`.
    """
    from collections import defaultdict

    from atlas_build.corpora.senses import lemma_order

    lemma, pos, synset = (full.column(name).to_pylist() for name in ("lemma", "pos", "synset"))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for key in zip(lemma, pos, synset, strict=True):
        groups[key[:2]].append({"synset": key[2]})
    total = len(groups)
    if max_lemmas is None or max_lemmas >= total:
        return full, total, total
    keep = set(lemma_order(groups)[:max_lemmas])
    mask = pa.array([key in keep for key in zip(lemma, pos, strict=True)])
    return full.filter(mask), len(keep), total


def _senses_cache_path(location: Path) -> Path:
    """Cache file of the full senses corpus of the WordNet at `location`: keyed by the database files
    (name, size, modification time) and the code that builds the corpus."""
    import hashlib

    from atlas_build.corpora import senses as senses_module
    from atlas_build.corpora import wordnet as wordnet_module
    from atlas_build.models import cache_root

    digest = hashlib.sha256(f"{location.resolve()}|v{SENSES_CACHE_VERSION}".encode())
    for module in (senses_module, wordnet_module):
        digest.update(Path(module.__file__).read_bytes())
    files = [location] if location.is_file() else [location / name for name in REQUIRED_FILES]
    for file in files:
        info = file.stat()
        digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    return cache_root() / "wordnet" / f"senses-{digest.hexdigest()[:24]}.parquet"


def cached_senses(wn, location: Path, progress: bool = False) -> pa.Table:
    """The full senses corpus of `wn`, from the cache when it is there and intact, else built and cached.

    A cache that cannot be read or written is ignored (the corpus is built in memory); the cached file is
    written atomically, so a killed build never leaves half a cache.
    """
    import pyarrow.parquet as pq

    from atlas_build.atlas.schema import SENSES_SCHEMA

    path = _senses_cache_path(location)
    try:
        table = pq.read_table(path, schema=SENSES_SCHEMA)
        if table.num_rows:
            return table
    except (OSError, ValueError, pa.ArrowException):
        pass
    table = build_senses(wn, progress=progress)
    try:
        from atlas_build.atlas.writer import write_parquet_atomic

        write_parquet_atomic(table, path, SENSES_SCHEMA)
    except Exception:  # noqa: BLE001 - a cache we cannot write (read-only home, full disk) is no error
        pass
    return table


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
