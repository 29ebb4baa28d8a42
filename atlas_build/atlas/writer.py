"""Atomic Parquet writing with the declared schema.

A shard is written to a temporary file in the same folder, flushed to disk and renamed into place, so a
build that dies (or a disk that fills) never leaves a half-written shard under its real name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.errors import AtlasError

COMPRESSION = "zstd"
# Row groups are the unit validation and metrics stream over; ~64k rows keeps them well under memory.
ROW_GROUP_ROWS = 65536


class AtlasWriteError(AtlasError):
    """A data file could not be written (disk full, permissions, schema mismatch)."""


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    sha256: str
    rows: int
    bytes: int


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly `schema` (column order, types, metadata), or raise naming the difference."""
    if table.schema.names != schema.names:
        raise AtlasWriteError(f"columns {table.schema.names} differ from the declared {schema.names}")
    if not table.schema.equals(schema, check_metadata=False):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise AtlasWriteError(f"table does not fit the declared schema: {error}") from error
    return table.replace_schema_metadata(schema.metadata)


def write_parquet_atomic(table: pa.Table, path: Path, schema: pa.Schema) -> WrittenFile:
    """Write `table` (conformed to `schema`) to `path` atomically; return its hash and size."""
    table = conform(table, schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pq.write_table(
            table,
            tmp,
            compression=COMPRESSION,
            row_group_size=ROW_GROUP_ROWS,
            # Deterministic bytes: same table, same library versions -> same file hash.
            write_statistics=True,
            store_schema=True,
        )
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise AtlasWriteError(f"could not write {path}: {error.strerror or error}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenFile(path=path, sha256=sha256_file(path), rows=table.num_rows, bytes=path.stat().st_size)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (manifest, card, marker) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise AtlasWriteError(f"could not write {path}: {error.strerror or error}") from error
        raise
