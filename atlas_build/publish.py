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
place, so a failed publish leaves nothing behind. `--repo-id` uploads the same folder with `HfApi` and tags
the commit `vX.Y.Z`; the token is whatever `HfApi` finds (HF_TOKEN or `hf auth login`) and never passes
through this module.

Layering: publishing stands above validation and the cards; neither imports this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import total_ordering
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from atlas_build.atlas.layout import MANIFEST, AtlasLayout
from atlas_build.atlas.manifest import Manifest, code_version
from atlas_build.atlas.schema import (
    MODELS,
    ROUTING_PREFIX,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TEXT_ID_COLUMN,
    TRACES,
)
from atlas_build.atlas.writer import sha256_file, write_text_atomic
from atlas_build.errors import AtlasError
from dataset_cards.render import (
    METRICS_DIR,
    METRICS_JSON,
    VALIDATION_JSON,
    CardContext,
    config_schemas,
    metrics_mismatch,
    models_rows,
    render_template,
    write_card,
)

CHANGELOG = "CHANGELOG.md"
RELEASE_JSON = "release.json"
RELEASES_INDEX = "releases.json"
SCRIPTS_DIR = "scripts"
RELEASE_FORMAT = "routing-atlas-release"
INDEX_FORMAT = "routing-atlas-releases"
STAGING_PREFIX = ".staging-"
REPO_TYPE = "dataset"

# semver.org 2.0.0 without build metadata: `+build` has no precedence, so two such versions could not be told
# apart as releases (and `+` is awkward in git tags).
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$"
)

# Row identity per config, for "rows added / removed" in the changelog.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    **{config: (column,) for config, column in TEXT_ID_COLUMN.items()},
    SENSE_PAIRS: ("pair_id",),
    MODELS: ("model_slug",),
}
ROUTING_KEY = ("corpus", "source_id", "token_index")
CONFIG_ORDER = (SENSES, SENSE_PAIRS, SUBSTITUTIONS, TRACES, MODELS)

# Fields of a models row whose change the changelog reports.
MODEL_FIELDS = (
    "model_id",
    "revision",
    "checkpoint_sha256",
    "engine",
    "dtype",
    "weights_dtype",
    "random_init",
    "seed",
    "n_routed_experts",
    "top_k",
    "moe_layers",
    "tokenizer",
)

# Headline numbers of metrics.json compared between releases: (label, path into a model's entry).
HEADLINE_METRICS = (
    ("Δκ same − different sense (layer mean)", ("sense_pairs", "layer_mean", "delta", "estimate")),
    (
        "Δκ context-adjusted (layer mean)",
        ("sense_pairs", "context_adjusted", "layer_mean", "delta", "estimate"),
    ),
    ("Δκ over null model (layer mean)", ("sense_pairs", "over_null", "layer_mean", "delta", "estimate")),
    ("Δκ synonym − other-sense (layer mean)", ("substitutions", "layer_mean", "delta", "estimate")),
    ("probe accuracy", ("probe", "accuracy", "estimate")),
)


class PublishError(AtlasError):
    """The release cannot be published as asked (nothing was written)."""


class VersionError(PublishError):
    """The version is not semver, or it already exists at the destination."""


class ValidationFailed(PublishError):
    """The atlas fails validation: a release is only ever made of a validated atlas."""


# ---- versions ---------------------------------------------------------------------------------------------


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


# ---- snapshots and the changelog ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the changelog compares: one release (or the atlas about to be released).

    `root` is None when only the release's metadata is at hand (a Hub release: manifest, release.json,
    metrics and changelog are downloaded, the data are not); rows are then compared by count only.
    """

    version: str | None
    root: Path | None
    manifest: dict[str, Any]
    schemas: dict[str, dict[str, Any]] | None  # config -> {"fields": [...], "metadata": {...}}
    models: dict[str, dict[str, Any]] | None  # None: not recorded by the release
    metrics: dict[str, Any] | None = None
    changelog: str | None = None

    @property
    def configs(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("configs") or {}


def schema_summary(schema: pa.Schema) -> dict[str, Any]:
    """A JSON form of a Parquet schema: fields (name, type, nullable) and the atlas's own metadata."""
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "metadata": {
            k.decode(): v.decode()
            for k, v in sorted((schema.metadata or {}).items())
            if k.startswith(b"routing_atlas.")
        },
    }


def model_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"model_slug": row["model_slug"], **{k: row.get(k) for k in MODEL_FIELDS}}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


def _released_manifest(root: Path) -> Manifest:
    """The manifest of an earlier release, whatever its schema version (it is only compared, never extended)."""
    data = _read_json(Path(root) / MANIFEST)
    if data is None:
        raise PublishError(f"{Path(root) / MANIFEST} is missing or unreadable: is {root} a release folder?")
    return Manifest(
        files=data.get("files", {}),
        builds=data.get("builds", []),
        corpus_counts=data.get("corpus_counts", {}),
        schema_version=data.get("schema_version"),
        code_version=data.get("code_version", "unknown"),
    )


def snapshot_of_atlas(root: Path, version: str | None = None, *, released: bool = False) -> Snapshot:
    """A snapshot with data: the atlas to release, or (`released`) an earlier local release folder."""
    root = Path(root)
    manifest = _released_manifest(root) if released else Manifest.load(root)
    return Snapshot(
        version=version,
        root=root,
        manifest=manifest.to_dict(),
        schemas={name: schema_summary(s) for name, s in config_schemas(root, manifest).items()},
        models={row["model_slug"]: model_summary(row) for row in models_rows(root, manifest)},
        metrics=_read_json(root / METRICS_DIR / METRICS_JSON),
        changelog=_read_text(root / CHANGELOG),
    )


def snapshot_of_metadata(folder: Path, version: str) -> Snapshot:
    """A snapshot without data, from a release's manifest.json, release.json, metrics.json and changelog."""
    folder = Path(folder)
    release = _read_json(folder / RELEASE_JSON) or {}
    configs = release.get("configs")
    return Snapshot(
        version=version,
        root=None,
        manifest=_read_json(folder / MANIFEST) or {},
        schemas={name: c["schema"] for name, c in configs.items() if "schema" in c} if configs else None,
        # Without release.json (a tag not made by `atlas publish`) the models are unknown, not absent.
        models={m["model_slug"]: m for m in release["models"]} if "models" in release else None,
        metrics=_read_json(folder / METRICS_DIR / METRICS_JSON),
        changelog=_read_text(folder / CHANGELOG),
    )


def _config_sort_key(name: str) -> tuple[int, str]:
    return (CONFIG_ORDER.index(name), name) if name in CONFIG_ORDER else (len(CONFIG_ORDER), name)


def _key_columns(config: str) -> tuple[str, ...] | None:
    if config.startswith(ROUTING_PREFIX):
        return ROUTING_KEY
    return KEY_COLUMNS.get(config)


def config_keys(root: Path, files: list[str], config: str) -> pa.Array | None:
    """One string key per row of a config (its id columns joined), or None if a file lacks them."""
    columns = _key_columns(config)
    if columns is None:
        return None
    chunks: list[pa.Array] = []
    for rel in files:
        path = Path(root) / rel
        if not set(columns) <= set(pq.read_schema(path).names):
            return None
        table = pq.read_table(path, columns=list(columns))
        parts = [pc.cast(table.column(c), pa.string()) for c in columns]
        joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")
        chunks.extend(joined.chunks)
    return (
        pa.chunked_array(chunks, type=pa.string()).combine_chunks() if chunks else pa.array([], pa.string())
    )


def _file_hashes(snapshot: Snapshot, config: str) -> set[str]:
    files = snapshot.manifest.get("files") or {}
    return {entry["sha256"] for entry in files.values() if entry.get("config") == config}


def diff_rows(old: Snapshot, new: Snapshot, config: str) -> dict[str, Any]:
    """Rows of one config, old vs new: counts, rows added and removed (by key when both have data)."""
    old_info, new_info = old.configs.get(config), new.configs.get(config)
    old_rows = old_info["rows"] if old_info else 0
    new_rows = new_info["rows"] if new_info else 0
    status = "new" if old_info is None else "removed" if new_info is None else "kept"
    out: dict[str, Any] = {
        "config": config,
        "status": status,
        "rows_before": old_rows,
        "rows": new_rows,
        "net": new_rows - old_rows,
        "added": None,
        "removed": None,
        "files_changed": _file_hashes(old, config) != _file_hashes(new, config),
        "by_key": False,
    }
    if status == "new":
        out.update(added=new_rows, removed=0, by_key=True)
    elif status == "removed":
        out.update(added=0, removed=old_rows, by_key=True)
    elif not out["files_changed"]:
        out.update(added=0, removed=0, by_key=True)
    elif old.root is not None and new.root is not None:
        old_keys = config_keys(old.root, old_info["files"], config)
        new_keys = config_keys(new.root, new_info["files"], config)
        if old_keys is not None and new_keys is not None:
            kept_new = pc.sum(pc.is_in(new_keys, value_set=old_keys)).as_py() or 0
            kept_old = pc.sum(pc.is_in(old_keys, value_set=new_keys)).as_py() or 0
            out.update(added=len(new_keys) - kept_new, removed=len(old_keys) - kept_old, by_key=True)
    return out


def diff_schemas(old: Snapshot, new: Snapshot) -> list[str]:
    """Human-readable schema changes of configs present in both releases (None: not comparable)."""
    if old.schemas is None or new.schemas is None:
        return ["not compared: the previous release does not record its schemas"]
    changes = []
    for config in sorted(set(old.schemas) & set(new.schemas), key=_config_sort_key):
        before, after = old.schemas[config], new.schemas[config]
        fields_before = {f["name"]: f for f in before["fields"]}
        fields_after = {f["name"]: f for f in after["fields"]}
        for name, f in fields_after.items():
            if name not in fields_before:
                changes.append(f"`{config}`: column `{name}` added (`{f['type']}`)")
        for name, f in fields_before.items():
            if name not in fields_after:
                changes.append(f"`{config}`: column `{name}` removed (was `{f['type']}`)")
                continue
            g = fields_after[name]
            if f["type"] != g["type"]:
                changes.append(f"`{config}`: column `{name}` type `{f['type']}` → `{g['type']}`")
            if f["nullable"] != g["nullable"]:
                changes.append(f"`{config}`: column `{name}` nullable {f['nullable']} → {g['nullable']}")
        common_before = [n for n in fields_before if n in fields_after]
        common_after = [n for n in fields_after if n in fields_before]
        if common_before != common_after:
            changes.append(f"`{config}`: column order {common_before} → {common_after}")
        for key in sorted(set(before.get("metadata", {})) | set(after.get("metadata", {}))):
            a, b = before.get("metadata", {}).get(key), after.get("metadata", {}).get(key)
            if a != b:
                changes.append(f"`{config}`: schema metadata `{key}` {a} → {b}")
    return changes


def _dig(entry: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(entry, dict):
            return None
        entry = entry.get(key)
    return entry if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None


def headline_metrics(metrics: dict[str, Any] | None) -> dict[tuple[str, str], float | None]:
    """(model slug, metric label) -> value, for the numbers the changelog tracks."""
    out = {}
    for slug, entry in ((metrics or {}).get("models") or {}).items():
        for label, path in HEADLINE_METRICS:
            value = _dig(entry, path)
            if value is not None:
                out[(slug, label)] = value
    return out


def diff_metrics(old: Snapshot, new: Snapshot) -> list[dict[str, Any]]:
    before, after = headline_metrics(old.metrics), headline_metrics(new.metrics)
    rows = []
    order = [label for label, _ in HEADLINE_METRICS]
    for key in sorted(set(before) | set(after), key=lambda k: (k[0], order.index(k[1]))):
        a, b = before.get(key), after.get(key)
        if a != b:
            change = None if a is None or b is None else b - a
            rows.append({"model": key[0], "metric": key[1], "before": a, "after": b, "change": change})
    return rows


def diff_models(old: Snapshot, new: Snapshot) -> dict[str, Any]:
    if old.models is None:
        return {"added": [], "removed": [], "changed": {}, "unknown": True}
    added = sorted(set(new.models) - set(old.models))
    removed = sorted(set(old.models) - set(new.models))
    changed = {}
    for slug in sorted(set(old.models) & set(new.models)):
        fields = {
            k: (old.models[slug].get(k), new.models[slug].get(k))
            for k in MODEL_FIELDS
            if old.models[slug].get(k) != new.models[slug].get(k)
        }
        if fields:
            changed[slug] = fields
    return {"added": added, "removed": removed, "changed": changed}


@dataclass
class ReleaseDiff:
    """Everything that changed between the previous release and this one (None: first release)."""

    previous: str | None
    configs: list[dict[str, Any]]
    models: dict[str, Any]
    schema: list[str]
    metrics: list[dict[str, Any]]
    new_metrics: dict[tuple[str, str], float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "configs": self.configs,
            "models": self.models,
            "schema": self.schema,
            "metrics": self.metrics,
        }


def diff_releases(old: Snapshot | None, new: Snapshot) -> ReleaseDiff:
    """Compare the previous release (None for the first) with the atlas about to be released."""
    empty = Snapshot(None, None, {}, {}, {})
    base = old or empty
    configs = sorted(set(base.configs) | set(new.configs), key=_config_sort_key)
    return ReleaseDiff(
        previous=old.version if old else None,
        configs=[diff_rows(base, new, c) for c in configs],
        models=diff_models(base, new),
        schema=diff_schemas(base, new) if old else [],
        metrics=diff_metrics(base, new),
        new_metrics=headline_metrics(new.metrics),
    )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _signed(value: int) -> str:
    return f"{value:+d}" if value else "0"


def _model_line(slug: str, model: dict[str, Any]) -> str:
    what = [f"`{model.get('model_id')}`"]
    if model.get("revision"):
        what.append(f"revision `{model['revision']}`")
    what.append(f"engine {model.get('engine')}")
    if model.get("random_init"):
        what.append("**random-init**")
    return f"`{slug}` ({', '.join(what)})"


def changelog_entry(diff: ReleaseDiff, new: Snapshot, version: Version, released: str) -> str:
    """This release's changelog section, in markdown."""
    random_init = {slug for slug, m in new.models.items() if m.get("random_init")}

    def model_label(slug: str) -> str:
        return f"`{slug}`" + (" (random-init)" if slug in random_init else "")

    def config_label(config: str, status: str | None = None) -> str:
        text = f"`{config}`" + (f" ({status})" if status else "")
        slug = config[len(ROUTING_PREFIX) :] if config.startswith(ROUTING_PREFIX) else None
        return text + (" random-init" if slug in random_init else "")

    built = (
        f"routing-atlas `{new.manifest.get('code_version')}`, "
        f"atlas schema version {new.manifest.get('schema_version')}"
    )
    lines = [f"## {version.tag} ({released})", ""]
    if diff.previous is None:
        lines += [f"First release. Built with {built}.", ""]
    else:
        lines += [f"Compared with v{diff.previous}. Built with {built}.", ""]

    lines += ["### Configs", ""]
    if diff.previous is None:
        lines += ["| config | rows | files |", "|---|---:|---:|"]
        for c in diff.configs:
            n_files = len(new.configs.get(c["config"], {}).get("files", []))
            lines.append(f"| {config_label(c['config'])} | {c['rows']} | {n_files} |")
    else:
        lines += [
            "| config | rows | change | rows added | rows removed | files |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for c in diff.configs:
            added = "?" if c["added"] is None else str(c["added"])
            removed = "?" if c["removed"] is None else str(c["removed"])
            kept = c["status"] == "kept"
            files = ("changed" if c["files_changed"] else "unchanged") if kept else c["status"]
            lines.append(
                f"| {config_label(c['config'], None if kept else c['status'])} | {c['rows']} "
                f"| {_signed(c['net'])} | {added} | {removed} | {files} |"
            )
        if any(not c["by_key"] for c in diff.configs):
            lines += [
                "",
                "`?`: the previous release's data were not at hand (Hub), so only the net change in rows is known.",
            ]
    lines.append("")

    lines += ["### Models", ""]
    models = diff.models
    if diff.previous is None:
        lines += [f"- {_model_line(s, m)}" for s, m in new.models.items()] or ["- None."]
    elif models.get("unknown"):
        lines.append("- Not compared: the previous release does not record its models.")
    elif not (models["added"] or models["removed"] or models["changed"]):
        lines.append("- No model added, removed or changed.")
    else:
        lines += [f"- Added: {_model_line(s, new.models[s])}" for s in models["added"]]
        lines += [f"- Removed: `{s}`" for s in models["removed"]]
        for slug, fields in models["changed"].items():
            what = "; ".join(f"{k} {a} → {b}" for k, (a, b) in fields.items())
            lines.append(f"- Changed: {model_label(slug)}: {what}")
    lines.append("")

    if diff.previous is not None:
        lines += ["### Schema changes", ""]
        lines += [f"- {change}" for change in diff.schema] or ["- None."]
        lines.append("")

    lines += ["### Metrics", ""]
    if diff.previous is None:
        if diff.new_metrics:
            lines += ["| model | metric | value |", "|---|---|---:|"]
            lines += [f"| {model_label(s)} | {m} | {_num(v)} |" for (s, m), v in diff.new_metrics.items()]
        else:
            lines.append("- No metrics in this release.")
    elif diff.metrics:
        lines += [
            f"| model | metric | v{diff.previous} | {version.tag} | change |",
            "|---|---|---:|---:|---:|",
        ]
        for row in diff.metrics:
            change = "–" if row["change"] is None else f"{row['change']:+.4g}"
            lines.append(
                f"| {model_label(row['model'])} | {row['metric']} | {_num(row['before'])} "
                f"| {_num(row['after'])} | {change} |"
            )
    elif diff.new_metrics:
        lines.append("- Headline metrics unchanged.")
    else:
        lines.append("- No metrics in this release.")
    lines.append("")
    return "\n".join(lines)


CHANGELOG_HEADER = (
    "# Changelog\n\n"
    "Every release of this atlas, newest first. A released version never changes: load one with its path "
    '`vX.Y.Z` (local releases) or `revision="vX.Y.Z"` (the Hub).\n\n'
)


def full_changelog(entry: str, previous: str | None) -> str:
    """The new entry on top of every earlier one (taken from the previous release's changelog)."""
    earlier = ""
    if previous and "\n## " in "\n" + previous:
        earlier = previous[("\n" + previous).index("\n## ") :].strip() + "\n"
    return CHANGELOG_HEADER + entry.rstrip() + "\n" + ("\n" + earlier if earlier else "")


# ---- validation -------------------------------------------------------------------------------------------


def run_validation_gate(root: Path):
    """`validation.run_validation(root)`; publishing is refused, never skipped, without the validation package."""
    try:
        from validation import run_validation
    except ImportError as error:
        raise PublishError(
            f"the validation package cannot be imported ({error}): publishing needs `validation.run_validation`; "
            "install routing-atlas with its validation package"
        ) from error
    try:
        from atlas_build.models import load_tokenizer

        return run_validation(Path(root), tokenizer_loader=load_tokenizer)
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


# ---- staging a release ------------------------------------------------------------------------------------


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


def _release_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def _metrics_files(source: Path) -> list[Path]:
    folder = source / METRICS_DIR
    if not (folder / METRICS_JSON).exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_metrics(source: Path, manifest: Manifest, log: Callable[[str], None]) -> None:
    """Refuse metrics computed on other data; they would be published as this release's findings."""
    metrics = _read_json(source / METRICS_DIR / METRICS_JSON)
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
    }
    write_text_atomic(staging / RELEASE_JSON, json.dumps(release, indent=2, ensure_ascii=False) + "\n")
    return snapshot, diff, entry


def _seal(folder: Path) -> None:
    """Make a release's files read-only: a release, once written, is never modified."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def _check_source(source: Path) -> Manifest:
    source = Path(source)
    if not source.is_dir():
        raise PublishError(f"{source} is not a directory: pass an atlas directory built by `atlas build`")
    return Manifest.load(source)


def _dry_run(source, parsed, target, previous, validate, released, log) -> PublishResult:
    """What a publish would do, as the result of one that wrote nothing."""
    diff, entry, files = _dry_run_report(source, parsed, target, previous, validate, released, log)
    return PublishResult(
        str(parsed), parsed.tag, target.describe(parsed), diff.previous, entry, files, True, diff.to_dict()
    )


def _dry_run_report(
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
        + list(manifest.files)
        + [f"{METRICS_DIR}/{p.name}" for p in _metrics_files(source)]
    )
    return diff, entry, files


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


# ---- local releases ---------------------------------------------------------------------------------------


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


def publish_local(
    source: Path,
    version: str,
    path: Path,
    *,
    dry_run: bool = False,
    validate: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] = print,
    released: str | None = None,
) -> PublishResult:
    """Publish the atlas at `source` as `path/v<version>/`, next to earlier releases.

    Raises:
        VersionError: `version` is not semver, or `path/v<version>` exists.
        ValidationFailed: the atlas fails validation.
        PublishError: anything else that stops the release; nothing is left behind.
    """
    source, path = Path(source), Path(path)
    validate = validate or run_validation_gate
    parsed = Version.parse(version)
    _check_source(source)
    if path.exists() and not path.is_dir():
        raise PublishError(f"--to {path} is a file: pass a folder of releases")
    if _inside(path, source):
        raise PublishError(f"--to {path} is inside the atlas {source}: publish to a folder outside it")
    existing = local_versions(path)
    final = path / parsed.tag
    if parsed in existing or final.exists() or os.path.lexists(final):
        raise VersionError(
            f"{parsed.tag} already exists at {final}: a published version never changes; publish a new version"
        )
    prev = previous_version(existing, parsed)
    previous = snapshot_of_atlas(path / prev.tag, str(prev), released=True) if prev else None
    released = released or _today()
    target = Target(path=path)

    if dry_run:
        return _dry_run(source, parsed, target, previous, validate, released, log)

    path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{parsed.tag}-", dir=path))
    try:
        _, diff, entry = stage_release(
            source, staging, parsed, target, previous, validate=validate, released=released, log=log
        )
        _seal(staging)
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
    files = _release_files(final)
    log(f"published {parsed.tag} to {final} ({len(files)} files)")
    return PublishResult(
        str(parsed), parsed.tag, str(final), diff.previous, entry, files, False, diff.to_dict()
    )


def write_index(path: Path) -> None:
    """Rewrite `path/releases.json` and `path/README.md` from the release folders (newest first)."""
    path = Path(path)
    releases = []
    for version in sorted(local_versions(path), reverse=True):
        release = _read_json(path / version.tag / RELEASE_JSON) or {}
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
    write_text_atomic(path / "README.md", "\n".join(lines) + "\n")


# ---- the Hub ----------------------------------------------------------------------------------------------


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
    _check_source(source)
    api = api if api is not None else HfApi()
    existing = hub_versions(api, repo_id)
    if parsed in existing:
        raise VersionError(
            f"tag {parsed.tag} already exists in {repo_id}: a published version never changes; publish a new version"
        )
    prev = previous_version(existing, parsed)
    released = released or _today()
    target = Target(repo_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="atlas-publish-") as tmp:
        previous = hub_snapshot(api, repo_id, prev, Path(tmp) / "previous") if prev else None
        if dry_run:
            return _dry_run(source, parsed, target, previous, validate, released, log)
        staging = Path(tmp) / parsed.tag
        _, diff, entry = stage_release(
            source, staging, parsed, target, previous, validate=validate, released=released, log=log
        )
        files = _release_files(staging)
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
    "publish",
    "publish_hub",
    "publish_local",
    "snapshot_of_atlas",
]
