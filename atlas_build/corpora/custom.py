"""The contract of the user's corpora (`atlas build --corpus wic|swords|jsonl|text`) and what they share.

A reader (`wic.read`, `swords.read`, `jsonl.read`, `text.read`, registered in `atlas_build.corpora.CUSTOM_CORPORA`)
turns the user's files into a `CorpusTables`: one Arrow table per config, each with its fixed schema from
`atlas_build.atlas.schema` (`CUSTOM_CORPUS_CONFIGS[kind]`), and what the card states about them (source, licence,
counts, how the rows were made). A reader checks the whole input before it returns, and raises
`CorpusInputError` naming the file, the line and the field of the first problem: nothing is written, and no model
is loaded, before every row is known to be good.

Readers never import the build; the build writes the tables (`atlas_build.builder.user_corpora`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from atlas_build.atlas.schema import FIXED_SCHEMAS
from atlas_build.errors import AtlasError
from validation.rules import is_form_of, is_word_aligned

# Parts of speech as the atlas stores them (WordNet's letters); a tag that maps to none is stored as null.
POS_LETTERS = ("n", "v", "a", "r")


class CorpusInputError(ValueError, AtlasError):
    """The user's corpus file is missing, unreadable or malformed (the message names file, line and field)."""


@dataclass(frozen=True)
class CorpusTables:
    """A corpus read from the user's files, ready to write.

    Attributes:
        kind: the corpus kind (wic, swords, jsonl, text).
        tables: config name -> rows, each with `FIXED_SCHEMAS[config]`; configs without rows are left out.
        inputs: the files read, `{"path": name, "sha256": hex}` each; their hashes identify the corpus.
        source: one line for the card: what the texts are and where they came from.
        license: the licence the texts are under, as the corpus publishes it (or that none is recorded).
        notes: how the rows were made, one statement per entry (thresholds, mappings, what was left out).
        counts: sizes for the card (e.g. {"examples": 10, "pairs": 5}).
        options: reader options that change the rows (text: the text column); part of the fingerprint.
    """

    kind: str
    tables: dict[str, pa.Table]
    inputs: tuple[dict[str, str], ...]
    source: str
    license: str
    notes: tuple[str, ...] = ()
    counts: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 over the input files' hashes and the options (file names excluded: a renamed copy is the same
        corpus)."""
        digest = hashlib.sha256()
        for entry in sorted(self.inputs, key=lambda e: e["sha256"]):
            digest.update(entry["sha256"].encode())
        digest.update(json.dumps(self.options, sort_keys=True).encode())
        return digest.hexdigest()

    def card_entry(self) -> dict[str, Any]:
        """What the manifest keeps for the card (`corpus_counts["corpora"][kind]`)."""
        return {
            "configs": sorted(self.tables),
            "counts": dict(self.counts),
            "inputs": [dict(e) for e in self.inputs],
            "fingerprint": self.fingerprint(),
            "options": dict(self.options),
            "source": self.source,
            "license": self.license,
            "notes": list(self.notes),
        }


def table(config: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as a table of `config`'s fixed schema."""
    return pa.Table.from_pylist(list(rows), schema=FIXED_SCHEMAS[config])


def read_bytes(path: Path, what: str) -> bytes:
    """A file's bytes, or a `CorpusInputError` saying it is missing or unreadable."""
    if not path.is_file():
        raise CorpusInputError(f"{what} {path} does not exist (or is not a file)")
    try:
        return path.read_bytes()
    except OSError as error:
        raise CorpusInputError(f"could not read {path}: {error.strerror or error}") from None


def decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is no part of the first field
    except UnicodeDecodeError as error:
        raise CorpusInputError(f"{path}: not UTF-8 text ({error})") from None


def unique_keys(pairs):
    """`json.loads` object hook: a key given twice is an error (JSON keeps the last one silently)."""
    record = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f"key {key!r} appears twice in one record")
        record[key] = value
    return record


def json_objects(raw: bytes, path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "FILE, line N", record) of each non-blank line of a JSON-lines file, parsed strictly.

    A line that is not JSON, not an object, nested too deeply (json's recursion limit), holding a key twice
    (JSON keeps the last one silently) or NaN/Infinity (not JSON) is a `CorpusInputError` naming the line.
    """

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON value")

    for number, line in enumerate(decode(raw, path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line, object_pairs_hook=unique_keys, parse_constant=no_constant)
        except json.JSONDecodeError as error:
            raise CorpusInputError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise CorpusInputError(f"{where}: nested too deeply to be a record") from None
        except ValueError as error:  # a key given twice, NaN/Infinity
            raise CorpusInputError(f"{where}: {error}") from None
        if not isinstance(record, dict):
            raise CorpusInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        refuse_surrogates(record, where)
        yield number, where, record


def refuse_surrogates(value: Any, where: str) -> None:
    """A JSON string escape of a lone UTF-16 surrogate (e.g. "\\ud800") is no text: refused, naming `where`."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        bad = error.object[error.start : error.end]
        raise CorpusInputError(
            f"{where}: a string holds a lone UTF-16 surrogate (\\u{ord(bad[0]):04x}), which is not text; "
            "write the character itself or a valid surrogate pair"
        ) from None
    except RecursionError:
        raise CorpusInputError(f"{where}: nested too deeply to be a record") from None


def file_entry(path: Path, raw: bytes) -> dict[str, str]:
    return {"path": path.name, "sha256": hashlib.sha256(raw).hexdigest()}


def char_span(text: str, start: Any, end: Any, where: str) -> tuple[int, int]:
    """Check a `[start, end)` character span of `text`; returns it as ints."""
    for name, value in (("target_start", start), ("target_end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise CorpusInputError(f"{where}: field {name!r} must be an integer, got {value!r}")
    if not 0 <= start < end <= len(text):
        raise CorpusInputError(
            f"{where}: fields 'target_start'/'target_end' ({start}, {end}) are not a non-empty span inside "
            f"the text of {len(text)} characters"
        )
    if text[start:end] != text[start:end].strip():
        raise CorpusInputError(
            f"{where}: the target span ({start}, {end}) = {text[start:end]!r} starts or ends with white space"
        )
    return start, end


def target_word(text: str, start: int, end: int, lemma: str | None, where: str) -> None:
    """The build's side of validation's `target-span` rule, so a span that misses its word is refused before
    routing: `text[start:end]` neither starts nor ends inside a word, and holds a form of `lemma` (when given;
    `validation.rules.is_form_of`)."""
    held = text[start:end]
    if not is_word_aligned(text, start, end):
        context = text[max(start - 10, 0) : end + 10]
        raise CorpusInputError(
            f"{where}: the target span ({start}, {end}) = {held!r} starts or ends inside a word (in {context!r}); "
            "a target covers whole words"
        )
    if lemma is not None and not is_form_of(held, lemma):
        raise CorpusInputError(
            f"{where}: the target span ({start}, {end}) holds {held!r}, which is not a form of the lemma {lemma!r}; "
            "point the span at the word it claims"
        )


def empty_corpus(path: Path, expected: str) -> CorpusInputError:
    return CorpusInputError(f"{path} holds no rows: expected {expected}")
