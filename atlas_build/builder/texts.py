"""The corpus step's WordNet side: write the corpora once per atlas, and list the texts to route in a fixed order."""

from __future__ import annotations

from pathlib import Path

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import (
    FIXED_SCHEMAS,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TEXT_ID_COLUMN,
)
from atlas_build.atlas.store import read_config, write_config
from atlas_build.atlas.texts import TextItem
from atlas_build.atlas.writer import (
    crash_point,
)
from atlas_build.builder.options import BuildConfig
from atlas_build.errors import BuildOptionsError


def wordnet_corpora_present(config: BuildConfig, manifest: Manifest) -> bool:
    """Whether the atlas already holds the WordNet corpora; refuses corpus options (--max-lemmas, --seed)
    that differ from the ones they were built with."""
    existing = manifest.corpus_counts.get("options")
    if existing is not None and SENSES in manifest.configs():
        # Every model of an atlas routes the same texts: the corpus of the first build is reused, and
        # conflicting corpus options are refused rather than silently ignored (the build record would
        # claim them) or mixing two corpora.
        wanted = config.corpus_options()
        for key, flag in (("max_lemmas", "--max-lemmas"), ("seed", "--seed")):
            if key == "max_lemmas" and config.max_lemmas is None:
                continue  # left out: reuse the atlas's
            if key == "seed" and config.random_init:
                continue  # --seed seeds the random-init twin's weights; the corpus is reused as it is
            if key in existing and wanted[key] != existing[key]:
                raise BuildOptionsError(
                    f"{config.out} holds WordNet corpora built with {flag} {existing[key]}, not "
                    f"{wanted[key]}: every model of an atlas routes the same texts, so build into a new "
                    f"directory, or pass {flag} {existing[key]} to reuse the atlas's corpus"
                )
        return True
    return False


def ensure_wordnet_corpora(config: BuildConfig, manifest: Manifest, log=None, check=None) -> bool:
    """Write senses, sense-pairs and substitutions unless the atlas already holds them (same options).

    `check(items)`, when given, sees the texts to route before anything is written (e.g. their lengths).

    Returns:
        Whether the corpora were written (the manifest, updated in memory, then needs saving).
    """
    from atlas_build.corpora import CORPUS_NOTES, build_wordnet_corpora, corpus_counts, describe_source

    if wordnet_corpora_present(config, manifest):
        return False
    tables = build_wordnet_corpora(
        wordnet_dir=config.wordnet_dir,
        max_lemmas=config.max_lemmas,
        seed=config.seed,
        progress=config.progress,
        log=log,
    )
    if check is not None:
        check([item for name in (SENSES, SUBSTITUTIONS) for item in table_texts(tables[name], name)])
    crash_point("corpus-before-write")
    for name in (SENSES, SENSE_PAIRS, SUBSTITUTIONS):
        write_config(config.out, manifest, name, tables[name], FIXED_SCHEMAS[name])
    # Other corpora's counts (traces) stay.
    manifest.corpus_counts = {
        **manifest.corpus_counts,
        **corpus_counts(tables),
        "options": config.corpus_options(),
        # For the card, which never imports corpora: where WordNet came from and how the corpora were made.
        "source": describe_source(config.wordnet_dir),
        "notes": list(CORPUS_NOTES),
    }
    return True


def wordnet_texts(root: Path, manifest: Manifest) -> list[TextItem]:
    """Every sense example, then every substitution, each sorted by id (a fixed order for sharding)."""
    items: list[TextItem] = []
    for name in (SENSES, SUBSTITUTIONS):
        items.extend(table_texts(read_config(root, manifest, name), name))
    return items


def table_texts(table, name: str) -> list[TextItem]:
    """The routed texts of one corpus config (its id column, text and target span), sorted by id."""
    if table is None or table.num_rows == 0 or name not in TEXT_ID_COLUMN:
        return []
    table = table.sort_by(TEXT_ID_COLUMN[name])
    ids, texts = table.column(TEXT_ID_COLUMN[name]).to_pylist(), table.column("text").to_pylist()
    if "target_start" in table.column_names:
        starts = [-1 if s is None else s for s in table.column("target_start").to_pylist()]
        ends = [-1 if e is None else e for e in table.column("target_end").to_pylist()]
    else:
        starts = ends = [-1] * len(ids)
    return [TextItem(*row) for row in zip(ids, [name] * len(ids), texts, starts, ends, strict=True)]
