"""The local target: `--to PATH` keeps releases side by side (`PATH/vX.Y.Z/`) with an index
(`PATH/releases.json`, `PATH/README.md`). A release is staged in a hidden folder of PATH and renamed into place.

May import: `publish.{base,versions,snapshots,staging}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from atlas_build.atlas.manifest import refuse_inside_release
from atlas_build.atlas.writer import TEMP_SUFFIX, write_text_atomic
from atlas_build.publish.audits import require_audits
from atlas_build.publish.base import (
    INDEX_FORMAT,
    RELEASE_JSON,
    RELEASES_INDEX,
    STAGING_PREFIX,
    PublishError,
    VersionError,
)
from atlas_build.publish.snapshots import read_json, snapshot_of_atlas
from atlas_build.publish.staging import (
    PublishResult,
    Target,
    check_source,
    dry_run_result,
    release_files,
    run_validation_gate,
    seal,
    stage_release,
    today,
)
from atlas_build.publish.versions import Version, previous_version

INDEX_README = "README.md"  # the folder of releases' own README (beside releases.json)


def local_versions(path: Path) -> list[Version]:
    """Versions released under `path` (folders `vX.Y.Z`)."""
    if not Path(path).is_dir():
        return []
    out = []
    for child in Path(path).iterdir():
        if child.name.startswith("v") and (version := Version.maybe(child.name[1:])) is not None:
            out.append(version)
    return sorted(out)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


LOCK_FILE = ".publish.lock"
LOCK_TIMEOUT_S = 3600.0


@contextlib.contextmanager
def releases_lock(
    path: Path, timeout: float = LOCK_TIMEOUT_S, log: Callable[[str], None] = print
) -> Iterator[None]:
    """Hold an exclusive `flock` on `path/.publish.lock`: one publish to a folder of releases at a time, so
    the second of two concurrent publishes sees the first's release (its changelog's previous version). The
    kernel drops the lock when the holder exits in any way, so a killed publish never blocks the next.

    A publish that fails in a folder it created leaves no folder behind: the lock file goes with it (only
    while the folder holds nothing else)."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise PublishError(
            f"cannot write to --to {path} ({error.strerror or error}): pass a folder you can write to"
        ) from error
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"another `atlas publish` to {path} holds {path / LOCK_FILE}: wait for it to finish and "
                        "publish again"
                    ) from None
                if not waited:
                    log(f"waiting for another `atlas publish` to {path} to finish ...")
                    waited = True
                time.sleep(0.05)
        yield
    except BaseException:
        if created and [p.name for p in path.iterdir()] == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                (path / LOCK_FILE).unlink()
                path.rmdir()
        raise
    finally:
        os.close(fd)


def clean_staging(path: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Remove the staging folders and the temporary files of the index (`.releases.json.*.tmp`,
    `.README.md.*.tmp`) that killed publishes left in `path` (only while holding its lock)."""
    removed = []
    for name in (RELEASES_INDEX, INDEX_README):
        for leftover in sorted(Path(path).glob(f".{name}.*{TEMP_SUFFIX}")):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()
                removed.append(leftover)
    for leftover in sorted(Path(path).glob(f"{STAGING_PREFIX}*")):
        if leftover.is_dir() and not leftover.is_symlink():
            for folder, _, _ in os.walk(leftover):  # sealed copies are read-only folders' files
                os.chmod(folder, 0o755)
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    if removed:
        log(
            f"removed {len(removed)} staging folder(s) or temporary file(s) left by an interrupted publish in {path}"
        )
    return removed


def index_is_stale(path: Path) -> bool:
    """Whether `path/releases.json` does not list exactly the published release folders (those holding their
    release.json: a publish killed between its rename and its index leaves such a folder unlisted)."""
    published = sorted(str(v) for v in local_versions(path) if (Path(path) / v.tag / RELEASE_JSON).is_file())
    if not published:
        return False
    index = read_json(Path(path) / RELEASES_INDEX) or {}
    listed = sorted(r.get("version") for r in index.get("releases") or [] if isinstance(r, dict))
    return listed != published


def repair_index(path: Path, log: Callable[[str], None] = print) -> bool:
    """Rewrite `path/releases.json` (and README.md) when it is stale (`index_is_stale`); returns whether it was
    repaired. Only while holding the folder's lock."""
    if not index_is_stale(path):
        return False
    write_index(path)
    log(f"repaired {Path(path) / RELEASES_INDEX}: it did not list every release folder")
    return True


def publish_local(
    source: Path,
    version: str,
    path: Path,
    *,
    dry_run: bool = False,
    validate: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] = print,
    released: str | None = None,
    require_audit: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> PublishResult:
    """Publish the atlas at `source` as `path/v<version>/`, next to earlier releases.

    Holds `path`'s publish lock throughout (a dry run writes nothing and takes none); first removes staging
    leftovers of killed publishes and repairs a stale index.

    Raises:
        VersionError: `version` is not semver, or `path/v<version>` exists.
        ValidationFailed: the atlas fails validation.
        PublishError: anything else that stops the release (another publish holds the lock past
            `lock_timeout`, `require_audit` without a passing audit of the current routing); nothing is
            left behind.
    """
    source, path = Path(source), Path(path)
    parsed = Version.parse(version)
    manifest = check_source(source)
    if path.exists() and not path.is_dir():
        raise PublishError(f"--to {path} is a file: pass a folder of releases")
    below_file = next((p for p in path.absolute().parents if p.exists() and not p.is_dir()), None)
    if below_file is not None:
        raise PublishError(f"--to {path} lies below {below_file}, which is a file: pass a folder of releases")
    refuse_inside_release(path, f"publishing into {path}")
    if _inside(path, source):
        raise PublishError(f"--to {path} is inside the atlas {source}: publish to a folder outside it")
    if require_audit:
        require_audits(source, manifest, log)
    # Writes nothing, so it takes no lock: a dry run, or an existing version refused with a true index.
    if dry_run or ((path / parsed.tag).exists() and not index_is_stale(path)):
        return _publish_local(source, parsed, path, dry_run, validate, log, released)
    with releases_lock(path, lock_timeout, log):
        clean_staging(path, log)
        repaired = repair_index(path, log)
        return _publish_local(source, parsed, path, dry_run, validate, log, released, repaired)


def _publish_local(source, parsed, path, dry_run, validate, log, released, repaired=False) -> PublishResult:
    validate = validate or run_validation_gate
    existing = local_versions(path)
    final = path / parsed.tag
    if parsed in existing or final.exists() or os.path.lexists(final):
        raise VersionError(
            f"{parsed.tag} already exists at {final}: a published version never changes; publish a new version"
            + (" (releases.json did not list it: it is repaired)" if repaired else "")
        )
    latest = max(existing, default=None)
    if latest is not None and parsed < latest:
        raise VersionError(
            f"{parsed.tag} is lower than the latest release {latest.tag} in {path}: the changelog runs in version "
            f"order, so a new release must be above {latest}; publish it as a higher version"
        )
    prev = previous_version(existing, parsed)
    previous = snapshot_of_atlas(path / prev.tag, str(prev), released=True) if prev else None
    released = released or today()
    target = Target(path=path)

    if dry_run:
        return dry_run_result(source, parsed, target, previous, validate, released, log)

    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{parsed.tag}-", dir=path))
    try:
        _, diff, entry = stage_release(
            source, staging, parsed, target, previous, validate=validate, released=released, log=log
        )
        seal(staging)
        staging.chmod(0o755)
        try:
            # rename() refuses a non-empty destination: a concurrent publish of the same version loses here.
            os.rename(staging, final)
        except OSError as error:
            raise VersionError(f"{parsed.tag} appeared at {final} while publishing: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_index(path)
    files = release_files(final)
    log(f"published {parsed.tag} to {final} ({len(files)} files)")
    return PublishResult(
        str(parsed), parsed.tag, str(final), diff.previous, entry, files, False, diff.to_dict()
    )


def write_index(path: Path) -> None:
    """Rewrite `path/releases.json` and `path/README.md` from the release folders (newest first)."""
    path = Path(path)
    releases = []
    for version in sorted(local_versions(path), reverse=True):
        release = read_json(path / version.tag / RELEASE_JSON) or {}
        releases.append(
            {
                "version": str(version),
                "tag": version.tag,
                "path": version.tag,
                "released": release.get("released"),
                "previous": release.get("previous"),
                "code_version": release.get("code_version"),
                "manifest_sha256": release.get("manifest_sha256"),
                "configs": {name: c.get("rows") for name, c in (release.get("configs") or {}).items()},
                "models": [m.get("model_slug") for m in release.get("models") or []],
                "random_init_models": [
                    m.get("model_slug") for m in release.get("models") or [] if m.get("random_init")
                ],
            }
        )
    index = {
        "format": INDEX_FORMAT,
        "latest": releases[0]["version"] if releases else None,
        "releases": releases,
    }
    write_text_atomic(path / RELEASES_INDEX, json.dumps(index, indent=2) + "\n")
    lines = [
        "# routing-atlas releases",
        "",
        "Each folder is one immutable release of the atlas; load a config of one with",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'senses = load_dataset("{(path / (releases[0]["tag"] if releases else "vX.Y.Z")).resolve()}", "senses", split="train")',
        "```",
        "",
        "| version | released | configs | models | changes |",
        "|---|---|---|---|---|",
    ]
    for r in releases:
        models = ", ".join(
            f"`{m}`" + (" (random-init)" if m in r["random_init_models"] else "") for m in r["models"]
        )
        lines.append(
            f"| [{r['tag']}]({r['tag']}/README.md) | {r['released']} | {len(r['configs'])} | {models} "
            f"| [CHANGELOG]({r['tag']}/CHANGELOG.md) |"
        )
    write_text_atomic(path / INDEX_README, "\n".join(lines) + "\n")
