"""Name -> implementation registries, resolved lazily ("module:attr"), with near-miss suggestions.

Heavy optional back-ends (vllm, ray) are only imported when their name is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from atlas_build.errors import AtlasError


class UnknownNameError(AtlasError):
    """A registry was asked for a name it does not hold."""


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def register(self, name: str, target: str) -> None:
        if name in self._entries and self._entries[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self._entries[name]}")
        self._entries[name] = target

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        module_name, _, attr = self._entries[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."
