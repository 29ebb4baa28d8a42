"""The unit every corpus hands to the build: one text to route, with its target span and labelled spans."""

from __future__ import annotations

from dataclasses import dataclass


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
