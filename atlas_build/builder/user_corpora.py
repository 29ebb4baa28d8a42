"""The corpus step's side for the user's corpora (`--corpus wic|swords|jsonl|text`).

`read_custom_corpus` reads and checks the whole input (before the model loads: a malformed file leaves the atlas
as it was); `ensure_custom_corpus` writes the corpus's configs once per atlas (a second model reuses them; another
input under the same kind is refused, since every model of an atlas routes the same texts); `custom_texts` lists
the texts to route in a fixed order.
"""

from __future__ import annotations

from pathlib import Path

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import CUSTOM_CORPUS_CONFIGS, FIXED_SCHEMAS, TEXT_ID_COLUMN
from atlas_build.atlas.store import read_config, write_config
from atlas_build.atlas.texts import TextItem
from atlas_build.builder.options import BuildConfig
from atlas_build.errors import BuildOptionsError

# manifest.corpus_counts key of the user's corpora: kind -> `CorpusTables.card_entry()`.
CORPORA_KEY = "corpora"


def read_custom_corpus(config: BuildConfig):
    """The user's corpus of `config.corpus`, read and checked whole (`atlas_build.corpora.custom.CorpusTables`)."""
    from atlas_build.corpora import CUSTOM_CORPORA

    reader = CUSTOM_CORPORA.get(config.corpus)
    return reader(config.corpus_input(), text_column=config.text_column)


def ensure_custom_corpus(config: BuildConfig, manifest: Manifest, corpus) -> bool:
    """Write the corpus's configs unless the atlas already holds the same corpus of this kind.

    Returns:
        Whether configs were written (the manifest, updated in memory, then needs saving).

    Raises:
        BuildOptionsError: the atlas holds another corpus of this kind (other input files).
    """
    kind = corpus.kind
    held = manifest.corpus_counts.get(CORPORA_KEY, {})
    existing = held.get(kind)
    if existing and all(manifest.config_files(name) for name in existing["configs"]):
        if existing["fingerprint"] == corpus.fingerprint():
            return False
        before = ", ".join(e["path"] for e in existing["inputs"])
        now = ", ".join(e["path"] for e in corpus.inputs)
        raise BuildOptionsError(
            f"{config.out} already holds a {kind} corpus read from {before}, and {now} differs from it: every "
            "model of an atlas routes the same texts, so build into a new directory, or pass the same files"
        )
    for name in CUSTOM_CORPUS_CONFIGS[kind]:
        table = corpus.tables.get(name)
        # An empty table removes the config (e.g. a probe set without pairs).
        write_config(
            config.out,
            manifest,
            name,
            table if table is not None else FIXED_SCHEMAS[name].empty_table(),
            FIXED_SCHEMAS[name],
        )
    manifest.corpus_counts[CORPORA_KEY] = {**held, kind: corpus.card_entry()}
    return True


def custom_texts(root: Path, manifest: Manifest, kind: str) -> list[TextItem]:
    """The routed texts of the kind's configs (those with an id column), each config sorted by id."""
    from atlas_build.builder.texts import table_texts

    items: list[TextItem] = []
    for name in CUSTOM_CORPUS_CONFIGS[kind]:
        if name in TEXT_ID_COLUMN:
            items.extend(table_texts(read_config(root, manifest, name), name))
    return items


def corpus_texts(corpus) -> list[TextItem]:
    """The texts a user's corpus read in memory will route (`custom_texts` before anything is written)."""
    from atlas_build.builder.texts import table_texts

    return [item for name, table in sorted(corpus.tables.items()) for item in table_texts(table, name)]
