"""Semantic versions of releases (semver.org 2.0.0, no build metadata) and which release a new one follows.

May import: `publish.base`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from atlas_build.publish.base import VersionError

# semver.org 2.0.0 without build metadata: `+build` has no precedence, so two such versions could not be told
# apart as releases (and `+` is awkward in git tags).
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$"
)

# Row identity per config, for "rows added / removed" in the changelog.


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version (semver.org), ordered by semver precedence."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _SEMVER_RE.match(text or "")
        if not match:
            hint = ""
            if text and text[:1] in "vV" and _SEMVER_RE.match(text[1:]):
                hint = f" (write {text[1:]}: the tag v{text[1:]} is derived from it)"
            elif text and "+" in text:
                hint = " (build metadata '+...' is not allowed: it does not order releases)"
            raise VersionError(
                f"version {text!r} is not a semantic version MAJOR.MINOR.PATCH, e.g. 0.1.0{hint}"
            )
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    @classmethod
    def maybe(cls, text: str) -> Version | None:
        try:
            return cls.parse(text)
        except VersionError:
            return None

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(self.prerelease) if self.prerelease else "")

    @property
    def tag(self) -> str:
        return f"v{self}"

    def _key(self) -> tuple:
        # A pre-release sorts before its release; numeric identifiers sort numerically, below alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()


def previous_version(existing: list[Version], version: Version) -> Version | None:
    """The release a new version is compared with: the highest existing version below it."""
    below = [v for v in existing if v < version]
    return max(below) if below else None
