"""Reading an atlas for the metrics: only through `datasets.load_dataset`, then pyarrow on its Arrow table.

SOURCE is an atlas directory (its README's `configs:` name the Parquet files) or a hub dataset id; the
revision is passed to `datasets` for hub ids. No model, tokenizer or WordNet is needed. The rows read are
proven to be the manifest's (`AtlasSource`, `atlas_build.atlas.rows`).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from atlas_build.atlas.rows import RowsMismatchError, check_rows, exact_cache_dir
from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX

# What the routing metrics read; `token`, character spans and gate weights are never loaded.
ROUTING_COLUMNS = [
    "source_id",
    "corpus",
    "token_index",
    "token_id",
    "is_target",
    "segment",
    "marker",
    "experts",
]


class SourceError(ValueError):
    """The source cannot be read as an atlas (missing, no `models` config, unknown model slug)."""


class RowsError(SourceError):
    """The rows `datasets` served are not those of the verified files (a stale or altered cache)."""


class AtlasSource:
    """One atlas, read config by config through `datasets.load_dataset(SOURCE, CONFIG, split="train")`.

    Exact reads (`atlas_build.atlas.rows`): each config is loaded into a datasets cache folder keyed by the
    sha256s its manifest lists (under `cache_dir`, default the datasets cache), so another atlas of the
    same folder name, or this folder before a rebuild, is never served; and the loaded rows are checked
    against the manifest's fingerprints before anything is computed on them (`checks` says how, per config).
    `verify=False` (`--no-verify`) keys the cache by the files' size, time and inode instead and checks no
    rows: the files may differ from the manifest, and the report says they were not checked.
    """

    def __init__(
        self,
        source: str | Path,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        *,
        manifest: dict | None = None,
        verify: bool = True,
    ):
        self.source = str(source)
        self.revision = revision
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.root = Path(self.source) if Path(self.source).is_dir() else None
        self.verify = verify
        self._manifest = manifest
        self._tables: dict[tuple[str, tuple[str, ...] | None], pa.Table] = {}
        self.checks: dict[str, str] = {}

    @cached_property
    def manifest(self) -> dict | None:
        """The manifest the rows are checked against: the one given, else a local atlas's manifest.json."""
        if self._manifest is not None or not self.verify:
            return self._manifest
        path = self.root / "manifest.json" if self.root else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SourceError(
                f"{path} is not readable JSON ({error}): rebuild or restore the atlas"
            ) from error

    def _entries(self, config: str) -> dict[str, dict]:
        files = (self.manifest or {}).get("files") or {} if self.verify else {}
        return {rel: meta for rel, meta in sorted(files.items()) if meta.get("config") == config}

    def _cache_key_files(self, config: str, entries: dict[str, dict]) -> dict[str, str] | None:
        if entries:
            return {rel: meta.get("sha256") for rel, meta in entries.items()}
        if self.root is None or not (self.root / config).is_dir():
            return None  # a hub dataset without a manifest: its cache is keyed by the resolved commit
        stats = {}
        for path in sorted((self.root / config).glob("*.parquet")):
            info = path.stat()
            stats[path.relative_to(self.root).as_posix()] = f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
        return stats

    def _kwargs(self, config: str | None = None, entries: dict[str, dict] | None = None) -> dict:
        kwargs = {}
        if self.revision:
            kwargs["revision"] = self.revision
        key_files = self._cache_key_files(config, entries or {}) if config else None
        if key_files:
            import datasets

            kwargs["cache_dir"] = str(
                exact_cache_dir(self.cache_dir or datasets.config.HF_DATASETS_CACHE, key_files)
            )
        elif self.cache_dir:
            kwargs["cache_dir"] = self.cache_dir
        return kwargs

    @cached_property
    def config_names(self) -> list[str]:
        import datasets

        try:
            return list(datasets.get_dataset_config_names(self.source, **self._kwargs()))
        except Exception as error:  # datasets raises several types for a missing or unreadable source
            raise SourceError(f"cannot read {self.source!r} as a dataset: {error}") from error

    def has(self, config: str) -> bool:
        return config in self.config_names

    def table(self, config: str, columns: list[str] | None = None) -> pa.Table | None:
        """The config's rows as an Arrow table (memory-mapped from the datasets cache), or None if absent."""
        if not self.has(config):
            return None
        key = (config, tuple(columns) if columns else None)
        if key not in self._tables:
            import datasets

            entries = self._entries(config)
            kwargs = self._kwargs(config, entries)
            if columns:
                kwargs["columns"] = list(columns)
            try:
                ds = datasets.load_dataset(self.source, config, split="train", **kwargs)
            except Exception as error:  # stale card, missing files, unreachable hub: say which config
                raise SourceError(
                    f"cannot load config {config!r} of {self.source!r} through datasets: "
                    f"{type(error).__name__}: {error}"
                ) from error
            # `ds.data` is the Arrow table behind the dataset; a fresh load has no indices mapping.
            table = ds.data.table if ds._indices is None else ds.with_format("arrow")[:]
            if entries:
                self.checks[config] = self._check(table, config, entries, ds)
            self._tables[key] = table
        return self._tables[key]

    def _check(self, table: pa.Table, config: str, entries: dict[str, dict], ds) -> str:
        folders = sorted({str(Path(f["filename"]).parent) for f in ds.cache_files}) or ["(in memory)"]
        try:
            return check_rows(
                table,
                config,
                entries,
                where=f"the datasets cache {folders[0]}",
                root=self.root,
                way_out=f"delete {folders[0]} (load_dataset rebuilds it from the verified files) or pass a "
                "fresh --cache-dir",
            )
        except RowsMismatchError as error:
            raise RowsError(str(error)) from error

    def models(self) -> list[dict]:
        table = self.table(MODELS)
        if table is None:
            raise SourceError(f"{self.source!r} has no `{MODELS}` config: is it a routing atlas?")
        rows = sorted(table.to_pylist(), key=lambda r: r["model_slug"])
        return [r for r in rows if self.has(ROUTING_PREFIX + r["model_slug"])]

    def routing(self, slug: str) -> pa.Table:
        table = self.table(ROUTING_PREFIX + slug, columns=ROUTING_COLUMNS)
        if table is None:
            raise SourceError(f"{self.source!r} has no routing config for model {slug!r}")
        return table
