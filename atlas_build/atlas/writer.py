"""Atomic Parquet writing with the declared schema.

A shard is written to a temporary file in the same folder, flushed to disk and renamed into place, so a
build that dies (or a disk that fills) never leaves a half-written shard under its real name. A write that
fails removes its temporary file and raises `AtlasWriteError` naming the file (and, for a full disk, what to
do); temporary files of a process that was killed are removed by the next build (`remove_temp_files`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.rows import fingerprint_record
from atlas_build.errors import AtlasError

COMPRESSION = "zstd"
# Measured at R1's shape on captured routing (bench/bench_encoding.py): zstd 9 with 8 MiB pages makes ids,
# weights and scores 2-6% smaller than zstd 3 with 1 MiB pages for 1.2-2.5x its write CPU time (noisy); zstd
# 19 saves ~1% more for ~13x. A reader decompresses a page at a time: 8 MiB stays small against a row group.
COMPRESSION_LEVEL = 9
DATA_PAGE_SIZE = 8 << 20
# Row groups are the unit validation and metrics stream over; ~64k rows keeps them well under memory.
ROW_GROUP_ROWS = 65536
# Temporary files are `.<name>.<random>.tmp` next to their target: hidden, so no data glob matches them.
TEMP_SUFFIX = ".tmp"
# Test hook, inert unless set: `<event>:<n>` SIGKILLs the process at the n-th `crash_point(event)`.
KILL_AT_ENV = "ROUTING_ATLAS_TEST_KILL_AT"
_crash_counts: dict[str, int] = {}


class AtlasWriteError(AtlasError):
    """A data file could not be written (disk full, permissions, schema mismatch)."""


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    sha256: str
    rows: int
    bytes: int
    # `atlas.rows.fingerprint_record` of the rows written (None: computed from the file when recorded).
    rows_fingerprint: dict | None = None


def crash_point(event: str) -> None:
    """Kill this process with SIGKILL at the n-th `event` when `ROUTING_ATLAS_TEST_KILL_AT=<event>:<n>`.

    The crash tests (tests/reliability/test_resume.py) interrupt builds at exact points of the write
    protocol with it; a SIGKILL runs no cleanup, like a preempted node. Does nothing unless the variable
    is set.
    """
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    name, _, nth = spec.rpartition(":")
    if name != event:
        return
    _crash_counts[event] = _crash_counts.get(event, 0) + 1
    if str(_crash_counts[event]) == nth:
        os.kill(os.getpid(), signal.SIGKILL)


def write_error(path: Path, error: OSError) -> AtlasWriteError:
    """An `AtlasWriteError` naming `path`; a full disk (or quota) says how to resume."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error):
        return AtlasWriteError(
            f"could not write {path}: the disk is full ({reason}). Nothing was half-written: free some "
            "space (or move the atlas to a larger disk) and rerun the same command to resume; finished "
            "shards are kept"
        )
    return AtlasWriteError(f"could not write {path}: {reason}")


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


def current_umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it races other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_file(path: Path) -> Path:
    """A new, empty temporary file next to `path` (creating its folder), with the mode a plain `open` gives.

    `mkstemp` makes its files 0600 whatever the umask: renamed into place they would be unreadable to
    colleagues on shared storage, so the file gets 0666 minus the umask, as any other new file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError as error:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise write_error(path, error) from error
    os.close(fd)
    return Path(tmp_name)


def _sync_dir(folder: Path) -> None:
    """Persist a rename (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def leaf_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Every Parquet leaf column of `schema` as (path, Arrow type): `experts.list.element.list.element`, ..."""

    def leaves(path: str, kind: pa.DataType) -> list[tuple[str, pa.DataType]]:
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            return leaves(f"{path}.list.element", kind.value_type)
        if pa.types.is_struct(kind):
            return [leaf for child in kind for leaf in leaves(f"{path}.{child.name}", child.type)]
        return [(path, kind)]

    return [leaf for field in schema for leaf in leaves(field.name, field.type)]


def column_encodings(schema: pa.Schema) -> dict:
    """The Parquet encoding of every column of every config, chosen per value type by measurement: the one
    place it is decided (`make bench`: bench/bench_encoding.py measures each choice at DeepSeek-R1's shape
    on captured routing, and what it costs each reader).

    - float32 (`scores`, and `weights` stored as float32): BYTE_STREAM_SPLIT, no dictionary. A dictionary
      of router scores is as large as the values (nearly all distinct) and its indices compress worse:
      2.67 B per score against 1.89 B split by byte (raw: 4 B). DuckDB, polars, pandas and `datasets` read it.
    - everything else, float16 `weights` included: a dictionary. Expert ids so stored come within 4% of
      `xz -9` of the same bytes (split by byte: no smaller); float16 weights would be 10% smaller split by
      byte, but DuckDB (and so the Hub's SQL console and viewer search) refuses BYTE_STREAM_SPLIT on float16
      ("only supported for FLOAT, DOUBLE, INT32 or INT64").
    """
    leaves = leaf_columns(schema)
    split = [path for path, kind in leaves if kind == pa.float32()]
    return {
        "use_dictionary": [path for path, _ in leaves if path not in split],
        "use_byte_stream_split": split,
    }


def parquet_options(schema: pa.Schema) -> dict:
    """Every `pq.write_table` option the writer uses for a table of `schema` (the benches write with these)."""
    return {
        "compression": COMPRESSION,
        "compression_level": COMPRESSION_LEVEL,
        "row_group_size": ROW_GROUP_ROWS,
        "data_page_size": DATA_PAGE_SIZE,
        # Deterministic bytes: same table, same library versions -> same file hash.
        "write_statistics": True,
        "store_schema": True,
        **column_encodings(schema),
    }


def write_parquet_atomic(table: pa.Table, path: Path, schema: pa.Schema) -> WrittenFile:
    """Write `table` (conformed to `schema`) to `path` atomically; return its hash and size."""
    table = conform(table, schema)
    path = Path(path)
    tmp = _temp_file(path)
    try:
        pq.write_table(table, tmp, **parquet_options(table.schema))
        crash_point("parquet-temp-written")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)
    crash_point("parquet-renamed")
    return WrittenFile(
        path=path,
        sha256=sha256_file(path),
        rows=table.num_rows,
        bytes=path.stat().st_size,
        rows_fingerprint=fingerprint_record(table),
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (manifest, card, marker) atomically."""
    path = Path(path)
    tmp = _temp_file(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("text-temp-written")
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    _sync_dir(path.parent)


def remove_temp_files(root: Path) -> list[Path]:
    """Remove the temporary files that killed writers left under `root`; return them.

    Only safe while holding the atlas lock (another writer's temporary files would vanish under it).
    """
    removed = []
    for tmp in Path(root).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
