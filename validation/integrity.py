"""Data files on disk vs `manifest.json`: hashes, sizes, row counts, missing and unexpected files.

`verify_files` is shared by `atlas validate` (its `manifest-files` check) and `atlas verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from atlas_build.atlas.layout import STATE_DIR, AtlasLayout
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.rows import FIELD as ROWS_FIELD
from atlas_build.atlas.rows import METHOD as ROWS_METHOD
from atlas_build.atlas.rows import file_fingerprints
from atlas_build.atlas.writer import sha256_file

MISSING = "missing"  # listed in the manifest, not on disk
UNEXPECTED = "unexpected"  # a Parquet file on disk the manifest does not list
SHA256 = "sha256"
BYTES = "bytes"
ROWS = "rows"
UNREADABLE = "unreadable"  # not a readable Parquet file
ROWS_FINGERPRINT = "rows-fingerprint"  # the rows differ from the manifest's `rows_fingerprint`


@dataclass(frozen=True)
class FileProblem:
    """One disagreement between a data file and its manifest entry."""

    path: str  # relative to the atlas root, POSIX separators
    config: str  # the manifest's config for the file, or its folder name for unexpected files
    kind: str  # missing | unexpected | sha256 | bytes | rows | unreadable | rows-fingerprint
    expected: str | int | None = None
    actual: str | int | None = None

    @property
    def message(self) -> str:
        if self.kind == MISSING:
            return f"{self.path}: listed in the manifest, missing on disk"
        if self.kind == UNEXPECTED:
            return f"{self.path}: data file not listed in the manifest"
        if self.kind == UNREADABLE:
            return f"{self.path}: not a readable Parquet file ({self.actual})"
        return f"{self.path}: {self.kind} {self.actual} on disk, {self.expected} in the manifest"

    def __str__(self) -> str:
        return self.message


def verify_files(root: Path, manifest: Manifest | None = None, hashes: bool = True) -> list[FileProblem]:
    """Compare every data file of the atlas at `root` with `manifest.json`.

    Args:
        root: the atlas directory.
        manifest: the loaded manifest (loaded from `root` when None).
        hashes: whether to recompute sha256 (reads every byte) and the rows' fingerprints (decodes every
            file); row counts come from Parquet footers.

    Returns:
        The problems found, in path order; empty when the files are exactly the manifest's.

    Raises:
        ManifestError: the manifest is missing, unreadable or of another schema version.
    """
    root = Path(root)
    manifest = manifest if manifest is not None else Manifest.load(root)
    problems: list[FileProblem] = []
    for rel, entry in sorted(manifest.files.items()):
        config = str(entry.get("config", rel.split("/")[0]))
        path = root / rel
        if not path.is_file():
            problems.append(FileProblem(rel, config, MISSING))
            continue
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            problems.append(FileProblem(rel, config, BYTES, entry["bytes"], size))
        if hashes:
            digest = sha256_file(path)
            if digest != entry.get("sha256"):
                problems.append(FileProblem(rel, config, SHA256, entry.get("sha256"), digest))
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as error:  # noqa: BLE001 - any reader failure means the file is unusable
            problems.append(FileProblem(rel, config, UNREADABLE, None, f"{type(error).__name__}: {error}"))
            continue
        if rows != entry.get("rows"):
            problems.append(FileProblem(rel, config, ROWS, entry.get("rows"), rows))
        elif hashes and (problem := _rows_fingerprint_problem(path, rel, config, entry)):
            problems.append(problem)
    listed = set(manifest.files)
    for path in data_files_on_disk(root):
        rel = AtlasLayout(root).relative(path)
        if rel not in listed:
            problems.append(FileProblem(rel, rel.split("/")[0] if "/" in rel else "atlas", UNEXPECTED))
    return sorted(problems, key=lambda p: (p.path, p.kind))


def _rows_fingerprint_problem(path: Path, rel: str, config: str, entry: dict) -> FileProblem | None:
    """The file's rows against the manifest's `rows_fingerprint` (what `atlas metrics` checks the rows it
    loads through datasets against): a manifest whose fingerprint is not its files' is not trustworthy.
    Atlases written before fingerprints have none: nothing to compare."""
    record = entry.get(ROWS_FIELD) or {}
    if record.get("method") != ROWS_METHOD:
        return None
    got = file_fingerprints(path)
    differ = sorted(
        c for c in set(got) | set(record.get("columns") or {}) if got.get(c) != record["columns"].get(c)
    )
    if not differ:
        return None
    return FileProblem(
        rel, config, ROWS_FINGERPRINT, "manifest.json's", f"columns {', '.join(differ[:3])} differ"
    )


def data_files_on_disk(root: Path) -> list[Path]:
    """Every Parquet file under `root`, outside the build-state folder and hidden temporary files."""
    root = Path(root)
    out = []
    for path in root.rglob("*.parquet"):
        rel = path.relative_to(root)
        if rel.parts[0] == STATE_DIR or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            out.append(path)
    return sorted(out)
