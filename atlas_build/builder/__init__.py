"""One build: corpora -> engine -> routing shards -> manifest and card.

The routed texts are split into deterministic shards of `texts_per_shard` texts. Each shard is written
atomically and then marked done (`.atlas/shards/<config>/<shard>.json`: file hash, row count, hash of the
shard's inputs), so a rerun into the same directory skips finished shards and redoes the rest.

Failure and recovery: the build holds the atlas lock (`atlas_build.atlas.lock`) throughout, loads the model before
writing anything (a bad model name or an unsupported model leaves the directory as it was), and saves the
manifest only after a whole step (corpora; routing + models). A build killed at any point resumes where it
stopped; a failed write (a full disk) removes its temporary file and leaves no unmarked shard behind.
`crash_point(event)` calls mark the protocol's steps for the crash tests (inert outside them).

Modules: `options` (BuildConfig, BuildStats), `texts` (the WordNet corpora and the texts to route), `custom`
(the user's corpora: wic, swords, jsonl, text), `shards`
(routing and writing one shard, the shard key, the engine factory), `steps` (the build as named steps).
"""

from __future__ import annotations

from atlas_build.atlas.texts import TextItem
from atlas_build.builder.options import CORPORA, WEIGHT_STORAGE, BuildConfig, BuildStats
from atlas_build.builder.shards import ShardWorker, make_engine, run_fingerprint, shard_table, span_labels
from atlas_build.builder.steps import BuildRun, run_build
from atlas_build.builder.texts import ensure_wordnet_corpora, wordnet_corpora_present, wordnet_texts

__all__ = [
    "CORPORA",
    "WEIGHT_STORAGE",
    "BuildConfig",
    "BuildRun",
    "BuildStats",
    "ShardWorker",
    "TextItem",
    "ensure_wordnet_corpora",
    "make_engine",
    "run_build",
    "run_fingerprint",
    "shard_table",
    "span_labels",
    "wordnet_corpora_present",
    "wordnet_texts",
]
