"""Unlabelled text -> `texts`, routed for the corpus-wide statistics only (expert load, co-activation, paths).

Input (`--texts`):

- a directory written by `datasets`' `save_to_disk` (a `Dataset`, or a `DatasetDict` whose split names are kept in
  the `split` column), read with `datasets.load_from_disk`; or
- a JSONL file, one JSON object per line (blank lines skipped).

The text is the `--text-column` field (default `text`): a non-empty string in every row. A row's id is its `id`
field when the input has one (unique, string or integer), else its position (`<row>` for a dataset, `line-<n>`
for JSONL); a `DatasetDict`'s ids are prefixed with the split (`<split>:<id>`). No targets or labels: these texts feed no sense metric.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from atlas_build.atlas.schema import TEXTS
from atlas_build.corpora.custom import (
    CorpusInputError,
    CorpusTables,
    file_entry,
    json_objects,
    read_bytes,
    table,
)

KIND = "text"
DEFAULT_COLUMN = "text"
LICENSE = "not recorded: a text collection supplied by the builder; see where it came from"
NOTES = (
    "texts: unlabelled texts routed as given, for corpus-wide routing statistics (expert load, co-activation); "
    "they have no target and feed no sense metric.",
)


def read(path: str | Path, *, text_column: str | None = None, **_options) -> CorpusTables:
    """Read a saved `datasets` dataset (a directory) or a JSONL file.

    Raises:
        CorpusInputError: the input is missing or unreadable, lacks the text column, or a row's text is not a
            non-empty string (naming the file or split, the line or row, and the field).
    """
    path, column = Path(path), text_column or DEFAULT_COLUMN
    if path.is_dir():
        rows, inputs = _from_dataset(path, column)
        source = f"saved datasets dataset {path.name}/ (column {column!r})"
    else:
        rows, inputs = _from_jsonl(path, column)
        source = f"JSONL {path.name} (field {column!r})"
    ids: dict[str, str] = {}
    for row, where in rows:
        if row["text_id"] in ids:
            raise CorpusInputError(
                f"{where}: duplicate id {row['text_id']!r} (also at {ids[row['text_id']]})"
            )
        ids[row["text_id"]] = where
    if not rows:
        raise CorpusInputError(f"{path} holds no texts")
    return CorpusTables(
        kind=KIND,
        tables={TEXTS: table(TEXTS, sorted((r for r, _ in rows), key=lambda r: r["text_id"]))},
        inputs=inputs,
        source=source,
        license=LICENSE,
        notes=NOTES,
        counts={"texts": len(rows)},
        options={"text_column": column},
    )


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CorpusInputError(f"{where}: field {column!r} must be a non-empty string, got {value!r}")
    return value


def _row_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise CorpusInputError(f"{where}: field 'id' must be a non-empty string or an integer, got {value!r}")
    return value


def _from_jsonl(path: Path, column: str) -> tuple[list[tuple[dict, str]], tuple[dict[str, str], ...]]:
    raw = read_bytes(path, "--texts file")
    rows = []
    for number, where, record in json_objects(raw, path):
        if column not in record:
            raise CorpusInputError(
                f"{where}: missing field {column!r} (the --text-column); the line has {', '.join(map(repr, record))}"
            )
        text_id = _row_id(record["id"], where) if "id" in record else f"line-{number:06d}"
        row = {"text_id": text_id, "text": _text(record[column], where, column), "split": None}
        rows.append(({**row, "source": f"{KIND}:{path.name}"}, where))
    return rows, (file_entry(path, raw),)


def _from_dataset(path: Path, column: str) -> tuple[list[tuple[dict, str]], tuple[dict[str, str], ...]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    # A damaged state.json or dataset_info.json surfaces as whatever `datasets` trips on (KeyError, TypeError).
    except (FileNotFoundError, ValueError, OSError, LookupError, TypeError, AttributeError) as error:
        raise CorpusInputError(
            f"--texts {path}: not a dataset saved with `save_to_disk` ({type(error).__name__}: {error}); pass such "
            "a directory or a JSONL file"
        ) from None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    rows, digest = [], hashlib.sha256()
    for split, dataset in sorted(splits.items(), key=lambda item: item[0] or ""):
        name = f"{path} (split {split})" if split else str(path)
        if column not in dataset.column_names:
            raise CorpusInputError(
                f"{name}: no column {column!r}; its columns are {', '.join(dataset.column_names)} (pass --text-column)"
            )
        # What identifies the corpus: the bytes of the Arrow files `save_to_disk` wrote.
        digest.update(f"{split}\n".encode())
        for cache in sorted(dataset.cache_files, key=lambda c: c["filename"]):
            digest.update(Path(cache["filename"]).read_bytes())
        texts = dataset[column]
        ids = dataset["id"] if "id" in dataset.column_names else None
        for index, value in enumerate(texts):
            where = f"{name}, row {index}"
            own = _row_id(ids[index], where) if ids is not None else f"{index:06d}"
            text_id = f"{split}:{own}" if split else own
            row = {
                "text_id": text_id,
                "text": _text(value, where, column),
                "split": split,
                "source": f"{KIND}:{path.name}",
            }
            rows.append((row, where))
    return rows, ({"path": f"{path.name}/", "sha256": digest.hexdigest()},)
