"""Versioned releases of an atlas: the validation gate, the changelog, local releases and Hub pushes.

A release is a folder that `datasets.load_dataset` opens, built once and never modified::

    vX.Y.Z/
      README.md                  the card, naming this release (local path, or hub id + revision vX.Y.Z)
      LICENSE.md                 WordNet 3.0 licence and each model's licence (the card's license_link)
      manifest.json              the atlas's manifest, byte for byte
      validation.json            the validation report of exactly these files (+ manifest_sha256)
      release.json               version, previous version, date, configs (rows, files, schema), models, changes
      CHANGELOG.md               this release's entry, then every earlier entry (newest first)
      scripts/                   reproduce_metrics.py + README.md: recompute the metrics from this release
      metrics/                   metrics.json, report.md, figures (when DIR/metrics/metrics.json exists)
      <config>/<config>-NNNNN.parquet

`--to PATH` keeps releases side by side (`PATH/v0.1.0/`, `PATH/v0.2.0/`, ...) with an index
(`PATH/releases.json`, `PATH/README.md`); a release is staged in a hidden folder of PATH and renamed into
place, so a failed publish leaves nothing behind. A publish holds PATH's lock (`PATH/.publish.lock`), removes
the staging folders of killed publishes and repairs an index that does not list every release folder. `--repo-id` uploads the same folder with `HfApi` and tags
the commit `vX.Y.Z`; the token is whatever `HfApi` finds (HF_TOKEN or `hf auth login`) and never passes
through this module.

Modules, one per role (each names what it may import):
  base.py       file names, formats, errors
  versions.py   semver parsing and ordering
  snapshots.py  snapshots of releases and the diffs between two of them
  changelog.py  the changelog entry written from a diff
  staging.py    the validation gate and the staged release folder (both targets use it)
  local.py      the `--to PATH` target and its index
  hub.py        the `--repo-id` target
  audits.py     `--require-audit`: every routing config passed `atlas audit` on its current files

Layering: publishing stands above validation and the cards; neither imports this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlas_build.publish.base import PublishError, ValidationFailed, VersionError
from atlas_build.publish.changelog import changelog_entry, full_changelog
from atlas_build.publish.hub import publish_hub
from atlas_build.publish.local import publish_local
from atlas_build.publish.snapshots import diff_releases, snapshot_of_atlas
from atlas_build.publish.staging import PublishResult
from atlas_build.publish.versions import Version


def publish(
    source: Path,
    version: str,
    *,
    to: Path | None = None,
    repo_id: str | None = None,
    dry_run: bool = False,
    **kwargs: Any,
) -> PublishResult:
    """`atlas publish`: exactly one of `to` (a local folder of releases) or `repo_id` (the Hub)."""
    if (to is None) == (repo_id is None):
        raise PublishError("pass exactly one destination: --to PATH or --repo-id ORG/NAME")
    if to is not None:
        kwargs.pop("private", None)
        return publish_local(source, version, Path(to), dry_run=dry_run, **kwargs)
    return publish_hub(source, version, repo_id, dry_run=dry_run, **kwargs)


__all__ = [
    "PublishError",
    "PublishResult",
    "ValidationFailed",
    "Version",
    "VersionError",
    "changelog_entry",
    "diff_releases",
    "full_changelog",
    "publish",
    "publish_hub",
    "publish_local",
    "snapshot_of_atlas",
]
