"""Reading an atlas for the metrics: only through `datasets.load_dataset`, then pyarrow on its Arrow table.

SOURCE is an atlas directory (its README's `configs:` name the Parquet files) or a hub dataset id; the
revision is passed to `datasets` for hub ids. No model, tokenizer or WordNet is needed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pyarrow as pa

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


class AtlasSource:
    """One atlas, read config by config through `datasets.load_dataset(SOURCE, CONFIG, split="train")`."""

    def __init__(self, source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None):
        self.source = str(source)
        self.revision = revision
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self._tables: dict[tuple[str, tuple[str, ...] | None], pa.Table] = {}

    def _kwargs(self) -> dict:
        kwargs = {}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.cache_dir:
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

            kwargs = self._kwargs()
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
            self._tables[key] = ds.data.table if ds._indices is None else ds.with_format("arrow")[:]
        return self._tables[key]

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
