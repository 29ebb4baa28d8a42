"""The Hub target: `--repo-id ORG/NAME` uploads the staged release with `HfApi` and tags the commit `vX.Y.Z`.
The token is whatever `HfApi` finds (HF_TOKEN or `hf auth login`) and never passes through this module.

May import: `huggingface_hub`, `publish.{base,versions,snapshots,staging}`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from atlas_build.atlas.layout import MANIFEST
from atlas_build.publish.audits import require_audits
from atlas_build.publish.base import CHANGELOG, RELEASE_JSON, REPO_TYPE, PublishError, VersionError
from atlas_build.publish.snapshots import Snapshot, snapshot_of_metadata
from atlas_build.publish.staging import (
    PublishResult,
    Target,
    check_source,
    dry_run_result,
    release_files,
    run_validation_gate,
    stage_release,
    today,
)
from atlas_build.publish.versions import Version, previous_version
from dataset_cards.render import METRICS_DIR, METRICS_JSON


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a Hub call raises when the Hub cannot be reached: offline mode (`OfflineModeIsEnabled` is a
    `ConnectionError`), no network or DNS (the HTTP client's transport errors)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


@contextmanager
def hub_reachable(repo_id: str, dry_run: bool) -> Iterator[None]:
    """Turn "the Hub cannot be reached" into one line with the way out (a dry run needs the Hub too: it
    compares with the previous release there)."""
    try:
        yield
    except _unreachable_errors() as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        what = "a dry run of a Hub publish still reads" if dry_run else "publishing reads"
        raise PublishError(
            f"cannot reach the Hub for {repo_id} ({first}); {what} the repo's tags and previous release. "
            "Go online (unset HF_HUB_OFFLINE), or publish to a local folder with --to PATH"
        ) from error


def hub_versions(api, repo_id: str) -> list[Version]:
    """Semver tags `vX.Y.Z` of the dataset repo (none when the repo does not exist yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    except RepositoryNotFoundError:
        return []
    names = [tag.name for tag in refs.tags]
    return sorted(v for name in names if name.startswith("v") and (v := Version.maybe(name[1:])) is not None)


def hub_snapshot(api, repo_id: str, version: Version, folder: Path) -> Snapshot:
    """The metadata of a Hub release (manifest, release.json, metrics.json, changelog), downloaded to `folder`."""
    from huggingface_hub.errors import EntryNotFoundError

    for filename in (MANIFEST, RELEASE_JSON, CHANGELOG, f"{METRICS_DIR}/{METRICS_JSON}"):
        try:
            api.hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                repo_type=REPO_TYPE,
                revision=version.tag,
                local_dir=folder,
            )
        except EntryNotFoundError:
            continue
    return snapshot_of_metadata(folder, str(version))


def publish_hub(
    source: Path,
    version: str,
    repo_id: str,
    *,
    dry_run: bool = False,
    private: bool | None = None,
    validate: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] = print,
    released: str | None = None,
    api=None,
    require_audit: bool = False,
) -> PublishResult:
    """Publish the atlas at `source` to the Hub dataset `repo_id` and tag the commit `v<version>`.

    The operations, in order: `list_repo_refs` (refuse an existing tag), `hf_hub_download` of the previous
    release's metadata (for the changelog), then, unless `dry_run`: `create_repo(exist_ok=True)`,
    `upload_folder` (the staged release; files of the previous release that are not in it are deleted from the
    branch, so the tagged commit holds exactly this release), `create_tag`.

    Raises:
        VersionError: `version` is not semver, or the tag exists.
        ValidationFailed: the atlas fails validation.
    """
    source = Path(source)
    validate = validate or run_validation_gate
    parsed = Version.parse(version)
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", repo_id or ""):
        raise PublishError(f"--repo-id {repo_id!r} is not a Hub id ORG/NAME")
    manifest = check_source(source)
    if require_audit:
        require_audits(source, manifest, log)
    api = api if api is not None else HfApi()
    with hub_reachable(repo_id, dry_run):
        existing = hub_versions(api, repo_id)
    if parsed in existing:
        raise VersionError(
            f"tag {parsed.tag} already exists in {repo_id}: a published version never changes; publish a new version"
        )
    latest = max(existing, default=None)
    if latest is not None and parsed < latest:
        raise VersionError(
            f"{parsed.tag} is lower than the latest release {latest.tag} of {repo_id}: the changelog runs in "
            f"version order, so a new release must be above {latest}; publish it as a higher version"
        )
    prev = previous_version(existing, parsed)
    released = released or today()
    target = Target(repo_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="atlas-publish-") as tmp:
        with hub_reachable(repo_id, dry_run):
            previous = hub_snapshot(api, repo_id, prev, Path(tmp) / "previous") if prev else None
        if dry_run:
            return dry_run_result(source, parsed, target, previous, validate, released, log)
        staging = Path(tmp) / parsed.tag
        _, diff, entry = stage_release(
            source, staging, parsed, target, previous, validate=validate, released=released, log=log
        )
        files = release_files(staging)
        try:
            api.create_repo(repo_id=repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private)
            log(f"uploading {len(files)} files to {repo_id} ...")
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(staging),
                repo_type=REPO_TYPE,
                commit_message=f"Release {parsed.tag}",
                commit_description=entry,
                delete_patterns="*",
            )
        except HfHubHTTPError as error:
            raise PublishError(
                f"the Hub refused the upload to {repo_id} (nothing was tagged): {error}"
            ) from error
        oid = getattr(commit, "oid", None)
        try:
            api.create_tag(
                repo_id,
                tag=parsed.tag,
                tag_message=f"routing-atlas release {parsed.tag}",
                revision=oid,
                repo_type=REPO_TYPE,
            )
        except HfHubHTTPError as error:
            raise PublishError(
                f"{repo_id} received the release as commit {oid}, but tagging it {parsed.tag} failed: {error}. "
                f"If the tag exists now, another publish won; else tag that commit by hand."
            ) from error
    log(f"published {parsed.tag} to {target.describe(parsed)}")
    return PublishResult(
        str(parsed),
        parsed.tag,
        target.describe(parsed),
        diff.previous,
        entry,
        files,
        False,
        diff.to_dict(),
        commit=str(oid) if oid else None,
    )
