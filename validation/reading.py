"""Finding an atlas's configs and files, and reading them in batches (one row group at a time)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.schema import (
    FIXED_SCHEMAS,
    MODELS,
    ROUTING_PREFIX,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TRACES,
    check_slug,
)
from validation.rules import BATCH_ROWS

# Report order; routing configs follow, by name.
CONFIG_ORDER = (SENSES, SENSE_PAIRS, SUBSTITUTIONS, TRACES, MODELS)


class MissingColumns(ValueError):
    """A data file lacks columns a check reads (the `schema` check reports the drift itself)."""


@dataclass
class AtlasFiles:
    root: Path
    manifest: Manifest
    configs: dict[str, list[Path]] = field(default_factory=dict)  # known configs -> data files on disk
    unknown: list[str] = field(default_factory=list)  # folders or manifest configs of no known config

    @property
    def routing_configs(self) -> list[str]:
        return [name for name in self.configs if name.startswith(ROUTING_PREFIX)]


def is_known_config(name: str) -> bool:
    if name in FIXED_SCHEMAS:
        return True
    if name.startswith(ROUTING_PREFIX):
        try:
            check_slug(name[len(ROUTING_PREFIX) :])
        except ValueError:
            return False
        return True
    return False


def discover(root: Path, manifest: Manifest) -> AtlasFiles:
    """The atlas's configs: those in the manifest and those with data files on disk.

    A config's data files are `<config>/<config>-*.parquet`, as `datasets` globs them.
    """
    root = Path(root)
    names = set(manifest.configs())
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and any(folder.glob("*.parquet")):
            names.add(folder.name)
    files = AtlasFiles(root, manifest)
    known = sorted((n for n in names if is_known_config(n)), key=_config_sort_key)
    files.unknown = sorted(n for n in names if not is_known_config(n))
    for name in known:
        files.configs[name] = sorted((root / name).glob(f"{name}-*.parquet"))
    return files


def _config_sort_key(name: str) -> tuple[int, str]:
    return (CONFIG_ORDER.index(name), name) if name in CONFIG_ORDER else (len(CONFIG_ORDER), name)


def iter_batches(
    paths: list[Path], columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Record batches of `paths` in order, `columns` only (those a file has; see `require`)."""
    for path in paths:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = None if columns is None else [c for c in columns if c in names]
        yield from parquet.iter_batches(batch_size=batch_rows, columns=wanted)


def require(batch: pa.RecordBatch | pa.Table, columns: list[str] | tuple[str, ...], config: str) -> None:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise MissingColumns(f"{config} lacks column(s) {', '.join(missing)}")


def column_batches(
    paths: list[Path],
    columns: list[str] | tuple[str, ...],
    config: str,
    batch_rows: int = BATCH_ROWS,
    *,
    as_lists: bool = True,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(rows, `columns` by name) of each record batch: Python lists, or Arrow arrays with `as_lists=False`; a
    file lacking one of them raises `MissingColumns`. The loop every text config's suite streams its rows with."""
    for batch in iter_batches(paths, list(columns), batch_rows):
        require(batch, columns, config)
        yield (
            batch.num_rows,
            {name: batch.column(name).to_pylist() if as_lists else batch.column(name) for name in columns},
        )


def read_table(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    """A small config (models) whole; files whose schemas differ are unified by name."""
    tables = [pq.read_table(path, columns=columns) for path in paths]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
