"""`DIR/manifest.json`: every data file with its sha256 and row count, the builds that made them.

Shape::

    {
      "format": "routing-atlas",
      "schema_version": 1,
      "code_version": "0.1.0+g1a2b3c4",
      "files": {"senses/senses-00000.parquet": {"config": "senses", "sha256": "...", "rows": 123, "bytes": 4567,
                "rows_fingerprint": {"method": "arrow-columns-v1", "columns": {"example_id": "...", ...}}}},
      "configs": {"senses": {"files": ["senses/senses-00000.parquet"], "rows": 123}},
      "builds": [{"kind": "wordnet" | "routing" | ..., "options": {...}, "stats": {...}, "code_version": "..."}],
      "corpus_counts": {...},
      "audits": [{"config": "routing-<slug>", "data_sha256": "...", "passed": true, ...}],  # `atlas audit`
    }

`configs` is derived from `files` on every save (and checked against them by validation); `audits` are the
results of `atlas audit`, each tied to the routing files it re-routed by `data_sha256` (`config_data_sha256`).

`rows_fingerprint` (`atlas.rows`) proves that rows a reader loaded (through a datasets cache, say) are those
of the file; atlases written before it have none and are checked by re-reading their files.

`data_hashes()` (path -> sha256) is what "two builds of the same inputs are identical" compares.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from atlas_build import code_version  # also imported from here by publishing, audit and validation
from atlas_build.atlas.layout import STATE_DIR, AtlasLayout
from atlas_build.atlas.rows import FIELD as ROWS_FIELD
from atlas_build.atlas.rows import METHOD as ROWS_METHOD
from atlas_build.atlas.rows import file_fingerprints
from atlas_build.atlas.schema import SCHEMA_VERSION
from atlas_build.atlas.writer import TEMP_SUFFIX, WrittenFile, write_text_atomic
from atlas_build.errors import EXIT_BAD_INPUT, DamagedAtlasError, RefusedError

FORMAT = "routing-atlas"
# A published release holds this file (written last by `atlas publish`); nothing may write into it after.
RELEASE_MARKER = "release.json"
RELEASE_FORMAT = "routing-atlas-release"


class ManifestError(DamagedAtlasError):
    """The manifest is missing, unreadable, or of an incompatible schema version."""


class NotAnAtlasError(ManifestError):
    """The folder has no manifest.json: it is not an atlas (a wrong path is bad input, not damage)."""

    exit_code = EXIT_BAD_INPUT


class UnsafeAtlasError(ManifestError):
    """The atlas folder holds a symbolic link or a hidden file where only plain data files belong."""


class PublishedReleaseError(RefusedError):
    """A command was about to write into a published release, which never changes."""


def published_release(root: Path) -> Path | None:
    """`root/release.json` when `root` is a published release (a folder `atlas publish` made), else None."""
    marker = Path(root) / RELEASE_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return marker  # a damaged release is still a release: refuse rather than "repair" it
    return (
        marker if not isinstance(data, dict) or data.get("format", RELEASE_FORMAT) == RELEASE_FORMAT else None
    )


def refuse_published_release(root: Path, action: str) -> None:
    """Raise `PublishedReleaseError` when `root` is a published release; `action` says what was refused.

    Raises:
        PublishedReleaseError: naming the release and the way out (work on a copy, publish a new version).
    """
    marker = published_release(root)
    if marker is None:
        return
    version = ""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        version = str(json.loads(marker.read_text(encoding="utf-8")).get("tag") or "")
    raise PublishedReleaseError(
        f"{root} is a published release{f' ({version})' if version else ''}: a published version never "
        f"changes, so {action} is refused. Copy it to a new directory, change the copy, and publish it as a "
        "new version"
    )


def release_around(path: Path) -> Path | None:
    """The published release `path` lies in (`path` itself or a folder above it), else None. Both the path
    as given and as resolved are looked at: a symbolic link into a release is inside it."""
    given = Path(os.path.abspath(path))
    candidates = [given, *given.parents]
    with contextlib.suppress(OSError, RuntimeError):
        resolved = Path(path).resolve()
        candidates += [resolved, *resolved.parents]
    for folder in candidates:
        if published_release(folder) is not None:
            return folder
    return None


def refuse_inside_release(path: Path, action: str) -> None:
    """Raise `PublishedReleaseError` when `path` lies inside a published release (every command that writes
    calls this on what it writes: `atlas metrics --out REL/metrics` would otherwise add files to a release).

    Raises:
        PublishedReleaseError: naming the release and the way out (write elsewhere).
    """
    release = release_around(path)
    if release is None:
        return
    with contextlib.suppress(OSError):
        if Path(path).resolve() == release.resolve():
            refuse_published_release(release, action)  # the release itself: its own message, its version
    raise PublishedReleaseError(
        f"{path} lies inside the published release {release}: a published version never changes, so {action} "
        "is refused. Write it outside the release (e.g. next to it), or copy the release and publish a new "
        "version"
    )


def unsafe_entries(root: Path, data_folders: set[str] | None = None) -> list[str]:
    """Symbolic links anywhere in the atlas (its build state `.atlas/` included; outside its other hidden
    top-level entries, e.g. a user's .git),
    and hidden files or folders inside its data folders (writers' temporary files excepted: an unfinished
    write, not a foreign file). Data folders: `data_folders` (the manifest's) and every folder holding a
    Parquet file; other folders (an explorer site, metrics) may hold hidden files of their own.

    Returns:
        One line per offending path, relative to `root`, saying what it is.
    """
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        return problems
    data_folders = set(data_folders or ())
    for top in sorted(root.iterdir(), key=lambda p: p.name):
        if top.is_symlink():
            problems.append(f"{top.name} is a symbolic link (to {os.readlink(top)})")
            continue
        if top.name == STATE_DIR and top.is_dir():
            # Build state: a link in it would let a resumed build write outside the atlas.
            for folder, dirs, files in os.walk(top):
                for name in sorted(dirs + files):
                    path = Path(folder) / name
                    if path.is_symlink():
                        rel = path.relative_to(root).as_posix()
                        problems.append(
                            f"{rel} is a symbolic link (to {os.readlink(path)}) in the build state"
                        )
            continue
        if top.name.startswith(".") or not top.is_dir():
            continue
        data = top.name in data_folders or any(top.rglob("*.parquet"))
        for folder, dirs, files in os.walk(top):
            here = Path(folder)
            for name in sorted(dirs + files):
                path = here / name
                rel = path.relative_to(root).as_posix()
                if path.is_symlink():
                    problems.append(f"{rel} is a symbolic link (to {os.readlink(path)})")
                elif data and name.startswith(".") and not (name.endswith(TEMP_SUFFIX) and path.is_file()):
                    problems.append(f"{rel} is a hidden {'folder' if path.is_dir() else 'file'}")
            dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return problems


def config_data_sha256(manifest: Manifest, config: str) -> str:
    """One hash over the (path, sha256) of every file of `config`: what an audit record is tied to."""
    digest = hashlib.sha256()
    for rel in manifest.config_files(config):
        digest.update(f"{rel}\0{manifest.files[rel].get('sha256')}\n".encode())
    return digest.hexdigest()


@dataclass
class Manifest:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    builds: list[dict[str, Any]] = field(default_factory=list)
    corpus_counts: dict[str, Any] = field(default_factory=dict)
    audits: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    code_version: str = field(default_factory=code_version)

    # ---- reading and writing -------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path) -> Manifest:
        """The manifest of the atlas at `root`; every reader of an atlas comes through here.

        Raises:
            ManifestError: missing, unreadable, another schema version, or a path outside the atlas.
            UnsafeAtlasError: a symbolic link, or a hidden file in a data folder (one line, naming it).
        """
        path = AtlasLayout(root).manifest_path
        if path.is_symlink():
            raise UnsafeAtlasError(
                f"{root}: manifest.json is a symbolic link; an atlas holds only plain files"
            )
        if not path.exists():
            raise NotAnAtlasError(
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
        if not isinstance(files, dict):
            raise ManifestError(
                f"{path}: its `files` is a JSON {type(files).__name__}, not an object: rebuild it"
            )
        for rel in files:
            parts = PurePosixPath(rel).parts
            # Paths come from a file anyone can edit: never let one point outside the atlas.
            if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
                raise ManifestError(
                    f"{path} lists {rel!r}, a path outside the atlas directory: it is not trustworthy"
                )
            # One spelling per file: a NUL cannot name a file, and `./x` or `a//b` would be a second name.
            if "\0" in rel or "\\" in rel or PurePosixPath(rel).as_posix() != rel or rel.startswith("./"):
                raise ManifestError(
                    f"{path} lists {rel!r}, not a plain relative path (a NUL, a backslash, `./` or `//`): it is "
                    "not trustworthy; restore manifest.json or rebuild the atlas"
                )
            if not isinstance(files[rel], dict):
                raise ManifestError(f"{path}: the entry of {rel!r} is not an object: it is not trustworthy")
        unsafe = unsafe_entries(Path(root), {PurePosixPath(str(rel)).parts[0] for rel in files if str(rel)})
        if unsafe:
            more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
            raise UnsafeAtlasError(
                f"{root}: {unsafe[0]}{more}; an atlas holds only plain files, so it is refused. Remove it, "
                "or rebuild into a new directory"
            )
        return cls(
            files=files,
            builds=data.get("builds", []),
            corpus_counts=data.get("corpus_counts", {}),
            audits=data.get("audits", []),
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
            **({"audits": self.audits} if self.audits else {}),
        }

    @staticmethod
    def raw(root: Path) -> dict[str, Any]:
        """manifest.json as written (its derived sections included), for the checks that compare them."""
        return json.loads(AtlasLayout(root).manifest_path.read_text(encoding="utf-8"))

    def save(self, root: Path) -> None:
        refuse_published_release(root, "rewriting its manifest.json")
        write_text_atomic(AtlasLayout(root).manifest_path, json.dumps(self.to_dict(), indent=2) + "\n")

    # ---- content -------------------------------------------------------------------------------
    def record(self, root: Path, config: str, written: WrittenFile) -> None:
        # The rows' fingerprint lets every reader prove it computes on these files' rows (`atlas.rows`).
        fingerprint = written.rows_fingerprint or {
            "method": ROWS_METHOD,
            "columns": file_fingerprints(written.path),
        }
        self.files[AtlasLayout(root).relative(written.path)] = {
            "config": config,
            "sha256": written.sha256,
            "rows": written.rows,
            "bytes": written.bytes,
            ROWS_FIELD: fingerprint,
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
