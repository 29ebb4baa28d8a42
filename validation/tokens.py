"""The `tokenization` check: a routing config's tokens are a fresh tokenization of its texts.

For every routed text of a plain-text corpus (senses, substitutions, the user's corpora), the rows' `token_id`, `token` and (`char_start`, `char_end`), in
`token_index` order, must equal what the recorded tokenizer gives for the text (special tokens added, as the
engines route; special tokens at (-1, -1)). This catches what the row-level checks cannot: a token replaced
consistently by another vocabulary entry (id and string), offsets shifted, a text edited after routing.
Traces are exempt: generated tokens need not re-tokenize to the ids the model produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.schema import TEXT_CONFIGS, TEXT_ID_COLUMN, TRACES
from validation.ledger import Ledger

CHECK = "tokenization"
COLUMNS = ["source_id", "corpus", "token_index", "token_id", "token", "char_start", "char_end"]
# Every corpus of plain texts (the user's corpora included); not traces.
RETOKENIZED = tuple(config for config in TEXT_CONFIGS if config != TRACES)
ENCODE_BATCH = 256


def read_texts(files: dict[str, list[Path]]) -> dict[tuple[str, str], str]:
    """(corpus, id) -> text of the re-tokenized corpora (first occurrence of an id)."""
    texts: dict[tuple[str, str], str] = {}
    for corpus in RETOKENIZED:
        for path in files.get(corpus) or []:
            table = pq.read_table(path, columns=[TEXT_ID_COLUMN[corpus], "text"])
            for text_id, text in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
                texts.setdefault((corpus, text_id), text)
    return texts


def expected_tokens(tokenizer: Any, texts: list[str]) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
    """(ids, token strings, spans `[n, 2]`) of each text, as the engines tokenize it."""
    encoded = tokenizer(
        texts, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True
    )
    out = []
    for i in range(len(texts)):
        ids = np.asarray(encoded["input_ids"][i], dtype=np.int64)
        spans = np.asarray(encoded["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        spans[np.asarray(encoded["special_tokens_mask"][i], dtype=bool)] = -1
        out.append((ids, tokenizer.convert_ids_to_tokens(ids.tolist()), spans))
    return out


def _describe(key: tuple[str, str], rows: dict[str, np.ndarray | list], want) -> str | None:
    """The first difference between a text's rows and its fresh tokenization, or None when equal."""
    ids, tokens, spans = want
    have_ids, have_tokens = rows["token_id"], rows["token"]
    have_spans = np.stack([rows["char_start"], rows["char_end"]], axis=1)
    where = f"{key[0]}:{key[1]}"
    if len(have_ids) != len(ids):
        return f"{where}: {len(have_ids)} tokens, a fresh tokenization of its text gives {len(ids)}"
    if np.array_equal(have_ids, ids) and np.array_equal(have_spans, spans) and list(have_tokens) == tokens:
        return None  # the common case, vectorised; the loop below only looks for the first difference
    for i in range(len(ids)):
        if have_ids[i] != ids[i] or have_tokens[i] != tokens[i] or tuple(have_spans[i]) != tuple(spans[i]):
            return (
                f"{where} token {i}: {int(have_ids[i])} {have_tokens[i]!r} {tuple(int(v) for v in have_spans[i])}, "
                f"a fresh tokenization gives {int(ids[i])} {tokens[i]!r} {tuple(int(v) for v in spans[i])}"
            )
    return None


def check_tokenization(
    config: str,
    paths: list[Path],
    texts: dict[tuple[str, str], str],
    tokenizer: Any,
    problem: str | None,
    ledger: Ledger,
) -> None:
    """Compare every routed senses/substitutions text of `config` with a fresh tokenization of it."""
    ledger.declare(config, CHECK)
    if tokenizer is None:
        ledger.skip(config, CHECK, problem or "tokenizer not available")
        return
    checked = failing = 0
    pending: list[tuple[tuple[str, str], dict]] = []
    for key, rows in _texts(paths):
        if key[0] in RETOKENIZED and key in texts:
            pending.append((key, rows))
        if len(pending) >= ENCODE_BATCH:
            checked, failing = _compare(pending, texts, tokenizer, ledger, config, checked, failing)
            pending = []
    checked, failing = _compare(pending, texts, tokenizer, ledger, config, checked, failing)
    ledger.count(config, CHECK, "texts equal a fresh tokenization", checked, failing)


def _compare(pending, texts, tokenizer, ledger, config, checked, failing):
    if not pending:
        return checked, failing
    expected = expected_tokens(tokenizer, [texts[key] for key, _ in pending])
    for (key, rows), want in zip(pending, expected, strict=True):
        difference = _describe(key, rows, want)
        checked += 1
        if difference is not None:
            failing += 1
            ledger.add_examples(config, CHECK, [difference])
    return checked, failing


def _texts(paths: list[Path]):
    """((corpus, source_id), its rows' columns in token_index order) per text of a routing config, in file
    order; a text whose rows continue in the next file is yielded once, whole."""
    carry: tuple[tuple[str, str], dict] | None = None
    for path in paths:
        for key, rows in _runs(pq.read_table(path, columns=COLUMNS)):
            if carry is not None and carry[0] == key:
                rows = {name: np.concatenate([carry[1][name], rows[name]]) for name in rows}
            elif carry is not None:
                yield _ordered(*carry)
            carry = (key, rows)
    if carry is not None:
        yield _ordered(*carry)


def _ordered(key: tuple[str, str], rows: dict) -> tuple[tuple[str, str], dict]:
    order = np.argsort(rows["token_index"], kind="stable")
    return key, {name: values[order] for name, values in rows.items()}


def _runs(table: pa.Table):
    """((corpus, source_id), columns of its rows) per run of one text in a routing file."""
    source = table.column("source_id").to_pylist()
    corpus = table.column("corpus").to_pylist()
    columns = {
        "token_index": table.column("token_index").to_numpy(zero_copy_only=False),
        "token_id": table.column("token_id").to_numpy(zero_copy_only=False),
        "token": np.asarray(table.column("token").to_pylist(), dtype=object),
        "char_start": table.column("char_start").to_numpy(zero_copy_only=False),
        "char_end": table.column("char_end").to_numpy(zero_copy_only=False),
    }
    n = len(source)
    start = 0
    for i in range(1, n + 1):
        if i == n or source[i] != source[start] or corpus[i] != corpus[start]:
            yield (corpus[start], source[start]), {name: values[start:i] for name, values in columns.items()}
            start = i
