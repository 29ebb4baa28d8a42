"""Snapshots of releases (or of the atlas about to be released) and the diffs between two of them: rows,
schemas, models and headline metrics.

May import: the ground floor (`atlas_build.atlas`), `dataset_cards.render` (its readers), `publish.base`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.layout import MANIFEST
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import (
    JSONL_PAIRS,
    MODELS,
    ROUTING_PREFIX,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TEXT_ID_COLUMN,
    TRACES,
    WIC_PAIRS,
)
from atlas_build.publish.base import CHANGELOG, RELEASE_JSON, PublishError
from dataset_cards.render import METRICS_DIR, METRICS_JSON, config_schemas, models_rows

# Row identity per config, for "rows added / removed" in the changelog.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    **{config: (column,) for config, column in TEXT_ID_COLUMN.items()},
    SENSE_PAIRS: ("pair_id",),
    WIC_PAIRS: ("pair_id",),
    JSONL_PAIRS: ("pair_id",),
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
    *(
        (
            f"Δκ under the {label} control (layer mean)",
            ("sense_pairs", "controls", name, "layer_mean", "delta", "estimate"),
        )
        for name, label in (
            ("context_words", "context-words"),
            ("token_identity", "token-identity"),
            ("null_model", "null-model"),
            ("all", "all-controls"),
        )
    ),
    ("Δκ synonym − other-sense (layer mean)", ("substitutions", "layer_mean", "delta", "estimate")),
    ("probe accuracy", ("probe", "accuracy", "estimate")),
)


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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_text(path: Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


def _released_manifest(root: Path) -> Manifest:
    """The manifest of an earlier release, whatever its schema version (it is only compared, never extended)."""
    data = read_json(Path(root) / MANIFEST)
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
        metrics=read_json(root / METRICS_DIR / METRICS_JSON),
        changelog=read_text(root / CHANGELOG),
    )


def snapshot_of_metadata(folder: Path, version: str) -> Snapshot:
    """A snapshot without data, from a release's manifest.json, release.json, metrics.json and changelog."""
    folder = Path(folder)
    release = read_json(folder / RELEASE_JSON) or {}
    configs = release.get("configs")
    return Snapshot(
        version=version,
        root=None,
        manifest=read_json(folder / MANIFEST) or {},
        schemas={name: c["schema"] for name, c in configs.items() if "schema" in c} if configs else None,
        # Without release.json (a tag not made by `atlas publish`) the models are unknown, not absent.
        models={m["model_slug"]: m for m in release["models"]} if "models" in release else None,
        metrics=read_json(folder / METRICS_DIR / METRICS_JSON),
        changelog=read_text(folder / CHANGELOG),
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
