"""Exact reads: proof that the rows a reader computes on are the rows of the files its manifest lists.

A sha256 of a Parquet file proves the file, not the rows a reader got: `datasets.load_dataset(folder, config)`
serves the Arrow cache it built for any earlier folder of the same name and card (another atlas called
`atlas`, or this folder before it was rebuilt), whatever the files hold now. So every data file's manifest
entry also records a fingerprint of its rows (`rows_fingerprint`, written with the file), and every reader
checks the rows it loaded against it before computing (`check_rows`); `exact_cache_dir` keys the datasets
cache by the verified sha256s, so a changed atlas is never served the old rows in the first place.

The fingerprint (method `arrow-columns-v1`) is one sha256 per column over the column's values in canonical
form, independent of how the rows are chunked or encoded (Parquet, the datasets Arrow cache, field names of
list items): per nesting level the list lengths (variable-size lists), the absolute positions of nulls, and
the leaf values (little-endian, nulls as zero; strings as lengths + bytes); the leaf type's name and the
fixed list sizes are part of it. A reader that loads some columns checks those columns.

An older atlas without fingerprints is checked by re-reading its (sha256-verified) Parquet files with pyarrow
and comparing their rows with the loaded ones (`check_rows` with `root`); an older hub dataset, whose files
are not at hand, rests on its pinned revision (the hub's datasets cache is keyed by the commit), and the
returned line says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

METHOD = "arrow-columns-v1"
FIELD = "rows_fingerprint"  # the key of a manifest file entry: {"method": METHOD, "columns": {name: sha256}}


class RowsMismatchError(ValueError):
    """The rows a reader loaded are not the rows its manifest records (a stale or altered cache).

    A ValueError, not an `AtlasError`: this module travels in a release's metrics bundle, which carries the
    ground floor only; each command's reader turns it into its own error (one line, non-zero exit).
    """


_BYTES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


class _Streams:
    """One sha256 per (nesting path, kind), fed chunk after chunk; `counts` gives absolute positions."""

    def __init__(self):
        self.digests: dict[str, hashlib._Hash] = {}
        self.counts: dict[str, int] = {}
        self.types: dict[str, str] = {}

    def update(self, key: str, values: np.ndarray) -> None:
        digest = self.digests.get(key)
        if digest is None:
            digest = self.digests[key] = hashlib.sha256()
        digest.update(np.ascontiguousarray(values).view(np.uint8).data)

    def update_bytes(self, key: str, data) -> None:
        digest = self.digests.get(key)
        if digest is None:
            digest = self.digests[key] = hashlib.sha256()
        digest.update(data)

    def hexdigest(self) -> str:
        total = hashlib.sha256(METHOD.encode())
        for key in sorted(set(self.digests) | set(self.types)):
            digest = self.digests.get(key)
            line = f"{key}\0{self.types.get(key, '')}\0{digest.hexdigest() if digest else ''}\n"
            total.update(line.encode())
        return total.hexdigest()


def _feed(streams: _Streams, array: pa.Array, path: str) -> None:
    if isinstance(array, pa.DictionaryArray):
        array = array.dictionary_decode()
    n = len(array)
    base = streams.counts.get(path, 0)
    streams.counts[path] = base + n
    if array.null_count:
        nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)) + base
        streams.update(f"{path}?null", nulls.astype("<i8"))
    kind = array.type
    if pa.types.is_null(kind):  # all nulls, positions fed above
        streams.types[path] = "null"
    elif pa.types.is_fixed_size_list(kind):
        streams.types[f"{path}#"] = f"fixed[{kind.list_size}]"
        _feed(streams, array.flatten(), f"{path}[]")
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        lengths = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        streams.update(f"{path}#len", lengths.astype("<i8"))
        _feed(streams, array.flatten(), f"{path}[]")
    elif pa.types.is_struct(kind):
        for i, child in enumerate(array.flatten()):
            _feed(streams, child, f"{path}.{kind.field(i).name}")
    elif any(test(kind) for test in _BYTES):
        _feed_bytes(streams, array, path)
    else:
        values = (
            array.fill_null(pa.scalar(False if pa.types.is_boolean(kind) else 0, kind))
            if array.null_count
            else array
        )
        numpy = values.to_numpy(zero_copy_only=False)
        streams.types[path] = str(kind)
        streams.update(path, numpy.astype(numpy.dtype.newbyteorder("<"), copy=False))


def _feed_bytes(streams: _Streams, array: pa.Array, path: str) -> None:
    if array.null_count:
        array = array.fill_null(pa.scalar(b"" if pa.types.is_binary(array.type) else "", array.type))
    streams.types[path] = "bytes"
    lengths = pc.binary_length(array).to_numpy(zero_copy_only=False)
    streams.update(f"{path}#len", lengths.astype("<i8"))
    offsets_type = (
        np.int64 if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type) else np.int32
    )
    _, offsets, data = array.buffers()[:3]
    if data is None or not len(array):
        return
    bounds = np.frombuffer(offsets, dtype=offsets_type)[array.offset : array.offset + len(array) + 1]
    streams.update_bytes(path, memoryview(data)[int(bounds[0]) : int(bounds[-1])])


def column_fingerprints(table: pa.Table, columns: list[str] | None = None) -> dict[str, str]:
    """Column name -> fingerprint (method `METHOD`) of `table`'s rows (all columns, or `columns`)."""
    out = {}
    for name in columns if columns is not None else table.column_names:
        streams = _Streams()
        for chunk in table.column(name).chunks:
            _feed(streams, chunk, "")
        out[name] = streams.hexdigest()
    return out


def fingerprint_record(table: pa.Table) -> dict:
    """The `rows_fingerprint` entry of a data file whose rows are `table`."""
    return {"method": METHOD, "columns": column_fingerprints(table)}


def file_fingerprints(path: Path, columns: list[str] | None = None) -> dict[str, str]:
    """`column_fingerprints` of a Parquet file, read row group by row group (memory stays one group)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = columns if columns is not None else parquet.schema_arrow.names
    streams = {name: _Streams() for name in names}
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=names)
        for name in names:
            for chunk in table.column(name).chunks:
                _feed(streams[name], chunk, "")
    return {name: s.hexdigest() for name, s in streams.items()}


def content_key(files: Mapping[str, str | None]) -> str:
    """One short hash of (path, sha256) of a config's verified files: what `exact_cache_dir` is keyed by."""
    digest = hashlib.sha256()
    for rel, sha in sorted(files.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()[:24]


def exact_cache_dir(base: str | Path, files: Mapping[str, str | None]) -> Path:
    """The datasets cache folder for a config whose files are `files` (path -> sha256): other data, other
    folder, so `load_dataset` never serves rows cached for another atlas or an earlier build of this one."""
    return Path(base) / "routing-atlas-exact" / content_key(files)


def check_rows(
    table: pa.Table,
    config: str,
    entries: Mapping[str, Mapping],
    *,
    where: str,
    root: Path | None = None,
    way_out: str,
) -> str:
    """Check that `table` (the loaded rows of `config`, its columns in any subset) holds exactly the rows of
        the manifest entries `entries` (path -> manifest file entry), concatenated in path order.

        Files with a recorded `rows_fingerprint` are compared with it; files without one (an older atlas) are
        re-read from `root` with pyarrow and compared row for row through the same fingerprint; without `root`
    (an older hub dataset) they are left unchecked and the returned line says so.

        Args:
            where: what was read, for the message (e.g. "the datasets cache /x/y").
            way_out: what the user should do about a mismatch (one clause).

        Returns:
            How the rows were checked (`METHOD` against the manifest, or against the re-read files).

        Raises:
            RowsMismatchError: one line naming the config, the first file whose rows differ, and `way_out`.
    """
    paths = sorted(entries)
    expected_rows = [int(entries[rel].get("rows", -1)) for rel in paths]
    if sum(expected_rows) != table.num_rows:
        raise RowsMismatchError(
            f"config {config!r}: {where} holds {table.num_rows} rows, manifest.json lists "
            f"{sum(expected_rows)}: these are not the verified files' rows; {way_out}"
        )
    columns = table.column_names
    reread, unchecked = False, 0
    offset = 0
    for rel, rows in zip(paths, expected_rows, strict=True):
        got = column_fingerprints(table.slice(offset, rows), columns)
        offset += rows
        record = entries[rel].get(FIELD) or {}
        recorded = record.get("columns") if record.get("method") == METHOD else None
        if recorded is None:
            if root is None:  # an older hub dataset: its rows are pinned by the revision only
                unchecked += 1
                continue
            recorded, reread = file_fingerprints(Path(root) / rel, columns), True
        differ = sorted(c for c in columns if recorded.get(c) != got[c])
        if differ:
            raise RowsMismatchError(
                f"config {config!r}: the rows read from {where} are not those of {rel} (column "
                f"{', '.join(differ[:3])}{' and more' if len(differ) > 3 else ''} differ from manifest.json's "
                f"fingerprint); {way_out}"
            )
    if unchecked:
        return (
            f"rows of {unchecked} of {len(paths)} files NOT fingerprinted (an atlas written before rows "
            "fingerprints, read from the hub): they rest on the pinned revision"
        )
    if reread:
        return f"rows compared with the verified Parquet files re-read by pyarrow ({METHOD}; older atlas)"
    return f"rows checked against manifest.json's fingerprints ({METHOD})"


def _files_of(files: Mapping[str, Mapping], config: str) -> dict[str, Mapping]:
    return {rel: meta for rel, meta in sorted(files.items()) if meta.get("config") == config}


def read_verified(
    root: Path, files: Mapping[str, Mapping], config: str, columns: list[str] | None = None, filter=None
) -> pa.Table | None:
    """The rows of `config` parsed from the very bytes whose sha256 was checked against the manifest.

    For the readers that open the Parquet files themselves (explore, the card): no cache stands between the
    files and the rows, so the sha256 of the bytes parsed proves the rows. `files` is the manifest's `files`
    section (path -> entry); `filter` a pyarrow expression applied while reading.

    Returns:
        The rows (files in path order), or None when the manifest lists no file of `config`.

    Raises:
        RowsMismatchError: a file is missing or differs from its manifest entry (one line, with the way out).
    """
    import pyarrow.parquet as pq

    entries = _files_of(files, config)
    tables = []
    for rel, meta in entries.items():
        path = Path(root) / rel
        try:
            data = path.read_bytes()
        except OSError as error:
            raise RowsMismatchError(
                f"config {config!r}: cannot read {rel} ({error.strerror or error}); run `atlas verify {root}`, "
                "then rebuild or restore the atlas"
            ) from error
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise RowsMismatchError(
                f"config {config!r}: {rel} is not the file manifest.json lists (sha256 differs): these rows were "
                f"not verified; run `atlas verify {root}`, then rebuild or restore the atlas"
            )
        tables.append(pq.read_table(pa.BufferReader(data), columns=columns, filters=filter))
    if not tables:
        return None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def refuse_unverified(root: Path, files: Mapping[str, Mapping], configs: set[str]) -> None:
    """Check the sha256 of every file of `configs` before a reader that opens them by path reads them.

    Raises:
        RowsMismatchError: the first file that is missing or differs (one line, with the way out).
    """
    for config in sorted(configs):
        for rel, meta in _files_of(files, config).items():
            path = Path(root) / rel
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
            except OSError as error:
                raise RowsMismatchError(
                    f"config {config!r}: cannot read {rel} ({error.strerror or error}); run `atlas verify "
                    f"{root}`, then rebuild or restore the atlas"
                ) from error
            if digest.hexdigest() != meta.get("sha256"):
                raise RowsMismatchError(
                    f"config {config!r}: {rel} is not the file manifest.json lists (sha256 differs); run "
                    f"`atlas verify {root}`, then rebuild or restore the atlas"
                )
