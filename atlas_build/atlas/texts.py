"""The unit every corpus hands to the build (one text to route, with its target span and labelled spans), and
which text configs a model routed (what the audit samples and validation's coverage check counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas_build.atlas.schema import (
    CUSTOM_CORPUS_CONFIGS,
    CUSTOM_TEXT_CONFIGS,
    SENSES,
    SUBSTITUTIONS,
    TEXT_CONFIGS,
    TRACES,
)


@dataclass(frozen=True)
class TextItem:
    """A text to route: its id in its corpus config, its target span (-1, -1 when none), and labelled
    character spans `(name, start, end)` for trace segments and reasoning markers."""

    source_id: str
    corpus: str
    text: str
    target_start: int = -1
    target_end: int = -1
    segments: tuple[tuple[str, int, int], ...] = ()
    markers: tuple[tuple[str, int, int], ...] = ()


def routed_text_configs(builds: list[dict[str, Any]], model_slug: str) -> list[str]:
    """The text configs whose every text `model_slug` routed, from the manifest's `builds[]` records of that
    model: `--corpus wordnet` routes senses and substitutions, `--corpus traces` the traces, a user's corpus
    its routed configs. In TEXT_CONFIGS order; empty when no build of that model is recorded."""
    wanted: set[str] = set()
    for build in builds:
        if (
            not isinstance(build, dict)
            or build.get("kind") != "routing"
            or build.get("model_slug") != model_slug
        ):
            continue
        corpus = build.get("corpus")
        kind = corpus.get("corpus") if isinstance(corpus, dict) else None
        if kind == "wordnet":
            wanted.update((SENSES, SUBSTITUTIONS))
        elif kind == TRACES:
            wanted.add(TRACES)
        elif kind in CUSTOM_CORPUS_CONFIGS:
            wanted.update(c for c in CUSTOM_CORPUS_CONFIGS[kind] if c in CUSTOM_TEXT_CONFIGS)
    return [config for config in TEXT_CONFIGS if config in wanted]
