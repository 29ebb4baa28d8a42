"""`DIR/manifest.json`: every data file with its sha256 and row count, the builds that made them.

Shape::

    {
      "format": "routing-atlas",
      "schema_version": 1,
      "code_version": "0.1.0+g1a2b3c4",
      "files": {"senses/senses-00000.parquet": {"config": "senses", "sha256": "...", "rows": 123, "bytes": 4567}},
      "configs": {"senses": {"files": ["senses/senses-00000.parquet"], "rows": 123}},
      "builds": [{"kind": "wordnet" | "routing" | ..., "options": {...}, "stats": {...}, "code_version": "..."}],
      "corpus_counts": {...},
    }

`data_hashes()` (path -> sha256) is what "two builds of the same inputs are identical" compares.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.schema import SCHEMA_VERSION
from atlas_build.atlas.writer import WrittenFile, write_text_atomic
from atlas_build.errors import AtlasError

FORMAT = "routing-atlas"


class ManifestError(AtlasError):
    """The manifest is missing, unreadable, or of an incompatible schema version."""


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from atlas_build import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


@dataclass
class Manifest:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    builds: list[dict[str, Any]] = field(default_factory=list)
    corpus_counts: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    code_version: str = field(default_factory=code_version)

    # ---- reading and writing -------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = AtlasLayout(root).manifest_path
        if not path.exists():
            raise ManifestError(
                f"{path} does not exist: is {root} an atlas directory built by `atlas build`?"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ManifestError(
                f"{path} is not readable JSON ({error}); run `atlas verify {root}`"
            ) from error
        if not isinstance(data, dict):
            raise ManifestError(
                f"{path} holds a JSON {type(data).__name__}, not a routing-atlas manifest (an object): is "
                f"{root} an atlas directory built by `atlas build`?"
            )
        if data.get("format") != FORMAT:
            raise ManifestError(f"{path} is not a routing-atlas manifest (format={data.get('format')!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{root} was built with atlas schema version {version}, this code writes version "
                f"{SCHEMA_VERSION}: build into a new directory (or use the routing-atlas release that made it)"
            )
        files = data.get("files", {})
        for rel in files:
            parts = PurePosixPath(rel).parts
            # Paths come from a file anyone can edit: never let one point outside the atlas.
            if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
                raise ManifestError(
                    f"{path} lists {rel!r}, a path outside the atlas directory: it is not trustworthy"
                )
        return cls(
            files=files,
            builds=data.get("builds", []),
            corpus_counts=data.get("corpus_counts", {}),
            schema_version=version,
            code_version=data.get("code_version", "unknown"),
        )

    @classmethod
    def load_or_new(cls, root: Path) -> Manifest:
        return cls.load(root) if AtlasLayout(root).manifest_path.exists() else cls()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "code_version": self.code_version,
            "files": dict(sorted(self.files.items())),
            "configs": self.configs(),
            "builds": self.builds,
            "corpus_counts": self.corpus_counts,
        }

    def save(self, root: Path) -> None:
        write_text_atomic(AtlasLayout(root).manifest_path, json.dumps(self.to_dict(), indent=2) + "\n")

    # ---- content -------------------------------------------------------------------------------
    def record(self, root: Path, config: str, written: WrittenFile) -> None:
        self.files[AtlasLayout(root).relative(written.path)] = {
            "config": config,
            "sha256": written.sha256,
            "rows": written.rows,
            "bytes": written.bytes,
        }

    def drop_config(self, config: str) -> None:
        self.files = {path: entry for path, entry in self.files.items() if entry["config"] != config}

    def drop_files(self, config: str, select) -> None:
        """Forget the files of `config` whose relative path `select(path)` is true."""
        self.files = {
            path: entry for path, entry in self.files.items() if entry["config"] != config or not select(path)
        }

    def configs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path, entry in sorted(self.files.items()):
            config = out.setdefault(entry["config"], {"files": [], "rows": 0, "bytes": 0})
            config["files"].append(path)
            config["rows"] += entry["rows"]
            config["bytes"] += entry["bytes"]
        return out

    def config_files(self, config: str) -> list[str]:
        return self.configs().get(config, {}).get("files", [])

    def data_hashes(self) -> dict[str, str]:
        """Relative path -> sha256 of every data file: equal for two builds of the same inputs."""
        return {path: entry["sha256"] for path, entry in sorted(self.files.items())}
