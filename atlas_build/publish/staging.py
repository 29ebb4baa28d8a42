"""Staging a release: copy the data and manifest, validate the copy (the gate), add the changelog, scripts,
card and release.json; the dry-run report. Both targets stage through here.

May import: `validation` (lazily: the gate), `dataset_cards.render`, the ground floor, `publish.{base,versions,
snapshots,changelog}`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from atlas_build.atlas.layout import MANIFEST, AtlasLayout
from atlas_build.atlas.manifest import RELEASE_MARKER, Manifest, code_version, published_release
from atlas_build.atlas.writer import sha256_file, write_text_atomic
from atlas_build.errors import AtlasError
from atlas_build.publish.base import (
    CHANGELOG,
    RELEASE_FORMAT,
    RELEASE_JSON,
    SCRIPTS_DIR,
    PublishError,
    ValidationFailed,
)
from atlas_build.publish.changelog import changelog_entry, full_changelog
from atlas_build.publish.snapshots import ReleaseDiff, Snapshot, diff_releases, read_json, snapshot_of_atlas
from atlas_build.publish.versions import Version
from dataset_cards.render import (
    METRICS_DIR,
    METRICS_JSON,
    VALIDATION_JSON,
    CardContext,
    metrics_mismatch,
    render_template,
    write_card,
)


def run_validation_gate(root: Path, tokenizer_dirs: dict | None = None):
    """`validation.run_validation(root)`; publishing is refused, never skipped, without the validation package.

    `tokenizer_dirs`: `atlas publish --tokenizer [SLUG=]DIR`, for models whose tokenizer cannot be loaded by name.
    """
    try:
        from validation import run_validation
    except ImportError as error:
        raise PublishError(
            f"the validation package cannot be imported ({error}): publishing needs `validation.run_validation`; "
            "install routing-atlas with its validation package"
        ) from error
    try:
        from atlas_build.models import checkpoint_marker, load_tokenizer

        return run_validation(
            Path(root),
            tokenizer_loader=load_tokenizer,
            checkpoint_marker=checkpoint_marker,
            tokenizer_dirs=tokenizer_dirs,
        )
    except AtlasError:
        raise
    except Exception as error:
        # AtlasNotFoundError and friends: not an atlas, or unreadable.
        raise PublishError(f"cannot validate {root}: {error}") from error


def _validation_problems(report) -> str:
    if hasattr(report, "render_table"):
        return report.render_table(only_problems=True)
    failures = [
        r for r in report.to_dict().get("results", []) if r.get("status") not in ("passed", "skipped")
    ]
    return "\n".join(f"{r['config']}  {r['check']}  {r['status']}" for r in failures)


@dataclass
class Target:
    """Where a release goes: a local folder of releases, or a Hub dataset repo."""

    path: Path | None = None
    repo_id: str | None = None

    def card_context(self, version: Version, released: str) -> CardContext:
        if self.repo_id:
            return CardContext(
                repo_ref=self.repo_id,
                revision=version.tag,
                version=str(version),
                released=released,
                hub_id=self.repo_id,
            )
        return CardContext(
            repo_ref=str((self.path / version.tag).resolve()),
            revision=version.tag,
            version=str(version),
            released=released,
        )

    def describe(self, version: Version) -> str:
        if self.repo_id:
            return f"https://huggingface.co/datasets/{self.repo_id} (tag {version.tag})"
        return str(self.path / version.tag)


@dataclass
class PublishResult:
    version: str
    tag: str
    destination: str
    previous: str | None
    changelog_entry: str
    files: list[str]
    dry_run: bool
    diff: dict[str, Any]
    commit: str | None = None


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)  # keeps mtimes: the card compares metrics.json's age with manifest.json's


def release_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def _metrics_files(source: Path) -> list[Path]:
    folder = source / METRICS_DIR
    if not (folder / METRICS_JSON).exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_metrics(source: Path, manifest: Manifest, log: Callable[[str], None]) -> None:
    """Refuse metrics computed on other data; they would be published as this release's findings."""
    metrics = read_json(source / METRICS_DIR / METRICS_JSON)
    if metrics is None:
        if (source / METRICS_DIR / METRICS_JSON).exists():
            raise PublishError(f"{source / METRICS_DIR / METRICS_JSON} is not readable JSON")
        return
    problems = metrics_mismatch(metrics, manifest)
    if problems:
        raise PublishError(
            f"{source / METRICS_DIR / METRICS_JSON} does not describe this atlas ({'; '.join(problems)}): rerun "
            f"`atlas metrics {source} --out {source / METRICS_DIR}`, or remove {source / METRICS_DIR}"
        )
    if (source / METRICS_DIR / METRICS_JSON).stat().st_mtime < AtlasLayout(
        source
    ).manifest_path.stat().st_mtime:
        log(f"warning: {METRICS_DIR}/{METRICS_JSON} is older than manifest.json; the card will say so")


def bundle_paths() -> list[str]:
    from atlas_build.metrics.provenance.bundle import bundle_files

    return sorted(bundle_files(""))


def _cli_options(options: dict[str, Any]) -> str:
    flags = {"target": "--target", "min_count": "--min-count", "n_bootstrap": "--bootstrap"}
    flags.update({"n_permutations": "--permutations", "seed": "--seed"})
    return "".join(f" {flag} {options[key]}" for key, flag in flags.items() if key in options)


def write_scripts(release: Path, version: Version, target: Target, metrics: dict[str, Any] | None) -> None:
    options = {k: v for k, v in ((metrics or {}).get("options") or {}).items() if k != "budget_bytes"}
    values = {
        "version": str(version),
        "tag": version.tag,
        "hub_id": target.repo_id,
        "local_path": str((target.path / version.tag).resolve()) if target.path else None,
        "options": options,
        "cli_options": _cli_options(options),
        "has_metrics": metrics is not None,
        "random_init": list((metrics or {}).get("random_init_models") or []),
    }
    scripts = release / SCRIPTS_DIR
    scripts.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        scripts / "reproduce_metrics.py", render_template("reproduce_metrics.py.jinja", **values)
    )
    write_text_atomic(scripts / "README.md", render_template("scripts_README.md.jinja", **values))
    # The metric code the script runs, so a release needs only `pip install datasets scipy matplotlib`.
    from atlas_build.metrics.provenance.bundle import write_bundle

    write_bundle(scripts)


def stage_release(
    source: Path,
    staging: Path,
    version: Version,
    target: Target,
    previous: Snapshot | None,
    *,
    validate: Callable[[Path], Any] | None = None,
    released: str,
    log: Callable[[str], None] = print,
) -> tuple[Snapshot, ReleaseDiff, str]:
    """Build the complete release folder `staging` from the atlas at `source`.

    The data files and manifest are copied first and validated there, so what is published is exactly what
    passed validation. Returns (snapshot of the release, diff, changelog entry).

    Raises:
        ValidationFailed: the copied atlas fails validation.
        PublishError: the metrics describe other data.
    """
    staging.mkdir(parents=True, exist_ok=True)
    # The manifest first, then the files it lists: validation of the copy checks every file against this
    # manifest (sha256), so an atlas changing under us is refused rather than published half-updated.
    _copy_file(AtlasLayout(source).manifest_path, staging / MANIFEST)
    manifest = Manifest.load(staging)
    check_metrics(source, manifest, log)
    for rel in sorted(manifest.files):
        if not (source / rel).is_file():
            raise PublishError(
                f"{source / rel} is listed in the manifest but missing: run `atlas validate {source}`"
            )
        _copy_file(source / rel, staging / rel)
    log(f"validating {len(manifest.files)} data files ...")
    report = (validate or run_validation_gate)(staging)
    if not report.passed:
        raise ValidationFailed(
            f"{source} fails validation; nothing was published. Problems:\n{_validation_problems(report)}\n"
            f"Fix them (see `atlas validate {source}`) and publish again."
        )
    record = report.to_dict()
    # Where it was validated is a temporary folder: record what it was validated against instead.
    record["atlas"] = "."
    record["manifest_sha256"] = sha256_file(staging / MANIFEST)
    write_text_atomic(staging / VALIDATION_JSON, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    for path in _metrics_files(source):
        _copy_file(path, staging / METRICS_DIR / path.name)

    snapshot = snapshot_of_atlas(staging, str(version))
    diff = diff_releases(previous, snapshot)
    entry = changelog_entry(diff, snapshot, version, released)
    write_text_atomic(staging / CHANGELOG, full_changelog(entry, previous.changelog if previous else None))
    write_scripts(staging, version, target, snapshot.metrics)
    write_card(staging, context=target.card_context(version, released))
    release = {
        "format": RELEASE_FORMAT,
        "version": str(version),
        "tag": version.tag,
        "previous": diff.previous,
        "released": released,
        "published_with": code_version(),
        "code_version": snapshot.manifest.get("code_version"),
        "schema_version": snapshot.manifest.get("schema_version"),
        "manifest_sha256": record["manifest_sha256"],
        "validation": {"passed": True, "summary": record.get("summary")},
        "metrics": snapshot.metrics is not None,
        "configs": {
            name: {
                "rows": info["rows"],
                "files": len(info["files"]),
                "bytes": info["bytes"],
                "schema": (snapshot.schemas or {}).get(name),
            }
            for name, info in snapshot.configs.items()
        },
        "models": list(snapshot.models.values()),
        "changes": diff.to_dict(),
        # Every other file of the release and its sha256 (the data files are the manifest's): `atlas verify`
        # reports any file that neither lists, e.g. metrics written into the release after it was published.
        "release_files": {
            rel: sha256_file(staging / rel)
            for rel in release_files(staging)
            if rel not in manifest.files and rel != RELEASE_JSON
        },
    }
    write_text_atomic(staging / RELEASE_JSON, json.dumps(release, indent=2, ensure_ascii=False) + "\n")
    return snapshot, diff, entry


def seal(folder: Path) -> None:
    """Make a release's files read-only: a release, once written, is never modified."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def check_source(source: Path) -> Manifest:
    source = Path(source)
    if not source.is_dir():
        raise PublishError(f"{source} is not a directory: pass an atlas directory built by `atlas build`")
    manifest = Manifest.load(source)
    marker = published_release(source)
    if marker is not None:
        # Republishing a release must not carry along files written into it after it was published.
        release = read_json(marker)
        rows = release_file_rows(source, manifest, release) if isinstance(release, dict) else []
        if rows:
            more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
            raise PublishError(
                f"{source} is a published release holding {rows[0][1]}: {rows[0][2]}{more}; `atlas verify "
                f"{source}` lists them. Restore the release (or publish from its source atlas); nothing was published"
            )
    return manifest


def release_file_rows(root: Path, manifest, release: dict) -> list[tuple[str, str, str]]:
    """Files of a release that neither manifest.json nor release.json's `release_files` lists (written into
    it after it was published), and listed release files that are missing or altered."""
    listed = release.get("release_files")
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
    if not isinstance(listed, dict):
        extra = [rel for rel in present if rel not in manifest.files and rel.endswith(".parquet")]
        return [("unexpected", rel, "not listed in manifest.json") for rel in extra]
    rows = []
    for rel in present:
        if rel == RELEASE_MARKER or rel in manifest.files:
            continue
        if rel not in listed:
            rows.append(
                (
                    "unexpected",
                    rel,
                    "listed by neither manifest.json nor release.json: added after publishing",
                )
            )
        elif sha256_file(root / rel) != listed[rel]:
            rows.append(("altered", rel, f"sha256 differs from release.json's {str(listed[rel])[:12]}"))
    rows += [
        ("missing", rel, "listed in release.json, not on disk")
        for rel in sorted(listed)
        if not (root / rel).is_file()
    ]
    return rows


def dry_run_result(source, parsed, target, previous, validate, released, log) -> PublishResult:
    """What a publish would do, as the result of one that wrote nothing."""
    diff, entry, files = dry_run_report(source, parsed, target, previous, validate, released, log)
    return PublishResult(
        str(parsed), parsed.tag, target.describe(parsed), diff.previous, entry, files, True, diff.to_dict()
    )


def dry_run_report(
    source: Path, version: Version, target: Target, previous: Snapshot | None, validate, released: str, log
) -> tuple[ReleaseDiff, str, list[str]]:
    """Validate in place and diff against the previous release, writing nothing."""
    manifest = Manifest.load(source)
    check_metrics(source, manifest, log)
    report = validate(source)
    if not report.passed:
        raise ValidationFailed(
            f"{source} fails validation, so it would not be published. Problems:\n{_validation_problems(report)}"
        )
    snapshot = snapshot_of_atlas(source, str(version))
    diff = diff_releases(previous, snapshot)
    entry = changelog_entry(diff, snapshot, version, released)
    files = sorted(
        [MANIFEST, VALIDATION_JSON, CHANGELOG, RELEASE_JSON, "README.md", "LICENSE.md"]
        + [f"{SCRIPTS_DIR}/reproduce_metrics.py", f"{SCRIPTS_DIR}/README.md"]
        + [f"{SCRIPTS_DIR}/{rel}" for rel in bundle_paths()]
        + list(manifest.files)
        + [f"{METRICS_DIR}/{p.name}" for p in _metrics_files(source)]
    )
    return diff, entry, files


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()
