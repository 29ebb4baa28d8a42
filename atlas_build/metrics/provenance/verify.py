"""Provenance and integrity: which data the metrics read, checked against the atlas's `manifest.json`.

`atlas metrics` refuses files that no longer match the manifest (altered, missing, or extra Parquet files
that `datasets` would read through a config's glob); the check hashes in a thread while the metrics are
computed (hashlib releases the GIL), and is decided before anything is written. A hub source is checked
against the manifest of that revision, through the sha256 of its LFS files.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path, PurePosixPath

from atlas_build.metrics.provenance.source import SourceError

MANIFEST = "manifest.json"
SKIP_FLAG = "--no-verify"


class IntegrityError(SourceError):
    """The atlas's data files do not match its manifest."""


def code_version() -> str:
    """The metrics code's version: the bundled release's, else the atlas package's (+ git commit)."""
    try:
        from atlas_build.metrics._bundled import CODE_VERSION  # written into a release's scripts/

        return CODE_VERSION
    except ImportError:
        from atlas_build import code_version as package_version

        return package_version()


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _safe(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and not PurePosixPath(rel).is_absolute() and ".." not in parts


def _linked(root: Path, rel: str) -> bool:
    """Whether `rel` or a folder on its way below `root` is a symbolic link."""
    path = root
    for part in PurePosixPath(rel).parts:
        path = path / part
        if path.is_symlink():
            return True
    return False


class Provenance:
    """The manifest of SOURCE and the check of the files of the configs the metrics read."""

    def __init__(self, source: str, revision: str | None = None, verify: bool = True):
        self.source, self.revision, self.verify = str(source), revision, verify
        self.root = Path(self.source) if Path(self.source).is_dir() else None
        self.manifest_bytes = self._manifest_bytes()
        try:
            self.manifest = json.loads(self.manifest_bytes) if self.manifest_bytes is not None else None
        except json.JSONDecodeError as error:
            raise IntegrityError(f"{self._where()} is not readable JSON ({error})") from error
        if self.manifest is None and verify:
            raise IntegrityError(
                f"{self.source!r} has no {MANIFEST}: its files cannot be checked; pass {SKIP_FLAG} to compute "
                "anyway (the report will say the data were not checked)"
            )
        self._thread: threading.Thread | None = None
        self._problems: list[str] = []
        self._files: dict[str, str] = {}

    def _where(self) -> str:
        return str(self.root / MANIFEST) if self.root else f"{MANIFEST} of {self.source}"

    def _manifest_bytes(self) -> bytes | None:
        if self.root is not None:
            path = self.root / MANIFEST
            return path.read_bytes() if path.is_file() else None
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(self.source, MANIFEST, repo_type="dataset", revision=self.revision)
        except Exception:  # not a hub dataset, offline, or no manifest: decided by the caller
            return None
        return Path(path).read_bytes()

    def files_of(self, configs: set[str]) -> dict[str, str]:
        """Manifest entries (path -> sha256) of `configs`."""
        files = (self.manifest or {}).get("files") or {}
        return {
            rel: meta.get("sha256") for rel, meta in sorted(files.items()) if meta.get("config") in configs
        }

    def start(self, configs: set[str]) -> None:
        """Begin checking the files of `configs` (in a thread); `finish()` waits and raises on a mismatch."""
        self._files = self.files_of(configs)
        if not self.verify:
            return
        self._thread = threading.Thread(target=self._check, args=(configs,), daemon=True)
        self._thread.start()

    def _check(self, configs: set[str]) -> None:
        try:
            self._problems = self._local_problems(configs) if self.root else self._hub_problems()
        except Exception as error:  # reported as a problem: the check must not pass silently
            self._problems = [f"the check failed: {type(error).__name__}: {error}"]

    def _local_problems(self, configs: set[str]) -> list[str]:
        problems = []
        for rel, expected in self._files.items():
            path = self.root / rel
            if not _safe(rel):
                problems.append(f"{rel} (a path outside the atlas)")
            elif _linked(self.root, rel):
                # A link can point anywhere (another atlas, /etc/passwd): the data must be the atlas's own.
                problems.append(f"{rel} (a symbolic link)")
            elif not path.is_file():
                problems.append(f"{rel} (missing)")
            elif sha256_of(path) != expected:
                problems.append(f"{rel} (sha256 differs)")
        listed = set((self.manifest or {}).get("files") or {})
        for config in sorted(configs):
            folder = self.root / config
            if folder.is_dir():
                for path in sorted(folder.glob("*.parquet")):
                    rel = path.relative_to(self.root).as_posix()
                    if rel not in listed:
                        problems.append(f"{rel} (not in the manifest)")
        return problems

    def _hub_problems(self) -> list[str]:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(self.source, revision=self.revision, files_metadata=True)
        remote = {s.rfilename: (s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
        problems = []
        for rel, expected in self._files.items():
            if rel not in remote:
                problems.append(f"{rel} (missing)")
            elif remote[rel] is not None and remote[rel] != expected:
                problems.append(f"{rel} (sha256 differs)")
        return problems

    def finish(self) -> None:
        """Wait for the check; raise `IntegrityError` (one line) when a file does not match."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._problems:
            shown = ", ".join(self._problems[:3]) + (
                f" and {len(self._problems) - 3} more" if len(self._problems) > 3 else ""
            )
            raise IntegrityError(
                f"{self.source} does not match its {MANIFEST}: {shown}; rebuild or restore the atlas "
                f"(`atlas validate` checks it), or pass {SKIP_FLAG} to compute on these files anyway"
            )

    def record(self, seeds: dict[str, int], options: dict, rows: dict[str, str] | None = None) -> dict:
        """The `provenance` block of metrics.json; `rows`: config -> how its loaded rows were checked
        against the manifest (`AtlasSource.checks`)."""
        manifest = self.manifest or {}
        return {
            "manifest_sha256": hashlib.sha256(self.manifest_bytes).hexdigest()
            if self.manifest_bytes
            else None,
            "manifest_code_version": manifest.get("code_version"),
            "data_files": self._files,
            "verified": bool(self.verify and self.manifest is not None),
            "verification": (
                f"{len(self._files)} data files checked against {MANIFEST} (sha256)"
                + (
                    f"; the rows read from {len(rows)} configs proven to be theirs (rows_checked)"
                    if rows
                    else ""
                )
                if self.verify
                else f"NOT CHECKED ({SKIP_FLAG}): the hashes are those {MANIFEST} lists, the files may differ"
            ),
            "rows_checked": dict(sorted((rows or {}).items())),
            "code_version": code_version(),
            "options": options,
            "seeds": seeds,
        }
