"""SWORDS (Lee, Donahue et al., NAACL 2021) in its published JSON format -> `swords-examples`, `swords-substitutions`.

Input: one of SWORDS' files (`swords-v1.1_dev.json.gz`, `swords-v1.1_test.json.gz`; gzip or plain JSON), one
object as the p-lambda/swords README describes it::

    {"contexts": {cid: {"context": str, "extra": ...}},
     "targets": {tid: {"context_id": cid, "target": str, "offset": int, "pos": "NOUN" | ... | null, ...}},
     "substitutes": {sid: {"target_id": tid, "substitute": str, ...}},
     "substitute_labels": {sid: ["TRUE", "FALSE", "TRUE_IMPLICIT", "FALSE_IMPLICIT", "UNSURE", ...]}}

`offset` is the target's character offset in its context (the library checks that the context holds the target
there, ignoring case; so does this reader).

Rows: each target is a `swords-examples` row (its id, the context as text, the target span); each substitute a
`swords-substitutions` row: the context with the target replaced by the substitute as given (its first letter
capitalised when the target's is), `score` = the share of its labels that accept it (TRUE or TRUE_IMPLICIT, over
all its labels, as SWORDS' own evaluation counts them), and the relation read off the score:

    acceptable    score > 0.5       (a majority of the annotators accepted it: SWORDS' "oracle-maj" threshold)
    conceivable   0 < score <= 0.5  (some accepted it: SWORDS' positives for precision/recall)
    rejected      score = 0

The split is read from the file name (`_dev`, `_test`, ...), else null.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

from atlas_build.atlas.schema import (
    SWORDS_ACCEPTABLE_ABOVE,
    SWORDS_EXAMPLES,
    SWORDS_RELATIONS,
    SWORDS_SUBSTITUTIONS,
)
from atlas_build.corpora.custom import (
    CorpusInputError,
    CorpusTables,
    decode,
    file_entry,
    read_bytes,
    refuse_surrogates,
    table,
    target_word,
    unique_keys,
)

KIND = "swords"
LABELS = ("TRUE", "FALSE", "TRUE_IMPLICIT", "FALSE_IMPLICIT", "UNSURE")
ACCEPTING = ("TRUE", "TRUE_IMPLICIT")
ACCEPTABLE, CONCEIVABLE, REJECTED = RELATIONS = SWORDS_RELATIONS
ACCEPTABLE_ABOVE = (
    SWORDS_ACCEPTABLE_ABOVE  # score > this: acceptable; 0 < score <= this: conceivable; 0: rejected
)
UD_TO_POS = {"NOUN": "n", "VERB": "v", "ADJ": "a", "ADV": "r"}
SECTIONS = ("contexts", "targets", "substitutes", "substitute_labels")
LICENSE = (
    "CC BY 3.0 US, as the SWORDS authors publish the benchmark (https://github.com/p-lambda/swords); its "
    "contexts come from CoInCo and the MASC corpus under the same licence. Check the terms of the copy you "
    "routed."
)
NOTES = (
    "swords-examples: one row per SWORDS target, its context as the text and the target span at the published "
    "character offset; lemma is the target as written, lower-cased (SWORDS gives no lemma); pos maps SWORDS' "
    "UD tags NOUN, VERB, ADJ, ADV to n, v, a, r (other tags: null).",
    "swords-substitutions: the context with the target replaced by each substitute as given (first letter "
    "capitalised when the target's is; not re-inflected); score = share of its human labels that are TRUE or "
    "TRUE_IMPLICIT; relation acceptable when score > 0.5, conceivable when 0 < score <= 0.5, rejected when "
    "score = 0.",
)
_SPLIT = re.compile(r"[_.-](train|dev|valid|validation|test)(?=[_.-]|$)")


def relation_of(score: float) -> str:
    """The relation of a substitute with this human score (see the module docstring)."""
    if score > ACCEPTABLE_ABOVE:
        return ACCEPTABLE
    return CONCEIVABLE if score > 0 else REJECTED


def read(path: str | Path, **_options) -> CorpusTables:
    """Read a SWORDS JSON file (gzip or plain).

    Returns:
        `swords-examples` (one row per target) and `swords-substitutions` (one per labelled substitute).

    Raises:
        CorpusInputError: not JSON, a missing section, a target whose context does not hold it at its offset,
            a dangling id, a substitute without labels or an unknown label; the message names the file and the
            entry (and the line and column of a JSON syntax error).
    """
    path = Path(path)
    raw = read_bytes(path, "SWORDS file")
    data = _load(path, raw)
    split_match = _SPLIT.search(path.name.split(".json")[0])
    split = split_match.group(1) if split_match else None
    source = f"{KIND}:{path.name}"
    contexts, targets, substitutes, labels = (data[name] for name in SECTIONS)

    examples: dict[str, dict[str, Any]] = {}
    for tid, target in targets.items():
        where = f"{path}: targets[{tid!r}]"
        _need(target, ("context_id", "target", "offset"), where)
        cid, word, offset = target["context_id"], target["target"], target["offset"]
        if not isinstance(cid, str) or cid not in contexts:
            raise CorpusInputError(f"{where}.context_id: {cid!r} is not an id of 'contexts'")
        context = _context_text(contexts[cid], f"{path}: contexts[{cid!r}]")
        if not isinstance(word, str) or not word.strip() or word != word.strip():
            raise CorpusInputError(
                f"{where}.target: must be a non-empty string without white space around it, got {word!r}"
            )
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise CorpusInputError(f"{where}.offset: must be an integer, got {offset!r}")
        end = offset + len(word)
        if offset < 0 or context[offset:end].lower() != word.lower():
            raise CorpusInputError(
                f"{where}.offset: the context holds {context[max(offset, 0) : max(end, 0)]!r} at offset {offset}, "
                f"not the target {word!r}"
            )
        target_word(context, offset, end, None, f"{where}.offset")
        pos = target.get("pos")
        if pos is not None and not isinstance(pos, str):
            raise CorpusInputError(f"{where}.pos: must be a UD tag string or null, got {pos!r}")
        examples[tid] = {
            "example_id": tid,
            "lemma": word.lower(),
            "pos": UD_TO_POS.get(pos) if pos else None,
            "label": None,
            "text": context,
            "target_start": offset,
            "target_end": end,
            "target_form": context[offset:end],
            "split": split,
            "source": source,
        }

    rows = []
    relations = dict.fromkeys(RELATIONS, 0)
    for sid, substitute in substitutes.items():
        where = f"{path}: substitutes[{sid!r}]"
        _need(substitute, ("target_id", "substitute"), where)
        tid, word = substitute["target_id"], substitute["substitute"]
        if not isinstance(tid, str) or tid not in examples:
            raise CorpusInputError(f"{where}.target_id: {tid!r} is not an id of 'targets'")
        if not isinstance(word, str) or not word.strip() or word != word.strip():
            raise CorpusInputError(
                f"{where}.substitute: must be a non-empty string without white space around it, got {word!r}"
            )
        given = labels.get(sid)
        if not isinstance(given, list) or not given:
            raise CorpusInputError(
                f"{path}: substitute_labels[{sid!r}]: every substitute needs a non-empty list of human labels, "
                f"got {given!r}"
            )
        unknown = [label for label in given if label not in LABELS]
        if unknown:
            raise CorpusInputError(
                f"{path}: substitute_labels[{sid!r}]: unknown label {unknown[0]!r}; SWORDS labels are "
                f"{', '.join(LABELS)}"
            )
        score = sum(label in ACCEPTING for label in given) / len(given)
        relation = relation_of(score)
        relations[relation] += 1
        base = examples[tid]
        surface = word[:1].upper() + word[1:] if base["target_form"][:1].isupper() else word
        start, end, text = base["target_start"], base["target_end"], base["text"]
        rows.append(
            {
                "substitution_id": sid,
                "example_id": tid,
                "lemma": base["lemma"],
                "pos": base["pos"],
                "relation": relation,
                "substitute": word,
                "score": score,
                "n_labels": len(given),
                "text": text[:start] + surface + text[end:],
                "target_start": start,
                "target_end": start + len(surface),
                "split": split,
                "source": source,
            }
        )
    bare = sorted(set(examples) - {row["example_id"] for row in rows})
    dangling = sorted(set(labels) - set(substitutes))
    if dangling:
        raise CorpusInputError(f"{path}: substitute_labels[{dangling[0]!r}]: not an id of 'substitutes'")
    if not examples:
        raise CorpusInputError(f"{path}: 'targets' is empty; a SWORDS file has targets with substitutes")
    return CorpusTables(
        kind=KIND,
        tables={
            SWORDS_EXAMPLES: table(SWORDS_EXAMPLES, sorted(examples.values(), key=lambda r: r["example_id"])),
            SWORDS_SUBSTITUTIONS: table(
                SWORDS_SUBSTITUTIONS, sorted(rows, key=lambda r: r["substitution_id"])
            ),
        },
        inputs=(file_entry(path, raw),),
        source=f"SWORDS, read from {path.name}" + (f" (split {split})" if split else ""),
        license=LICENSE,
        notes=NOTES
        + (
            (
                f"{len(bare)} target(s) have no substitute (e.g. {bare[0]!r}): kept as swords-examples rows, "
                "with no swords-substitutions row",
            )
            if bare
            else ()
        ),
        counts={
            "examples": len(examples),
            "substitutions": {"total": len(rows), **relations},
            "targets_without_substitutes": len(bare),
        },
    )


def _load(path: Path, raw: bytes) -> dict[str, dict]:
    """The file's JSON object, parsed strictly: an id (or any key) given twice in one object is refused (JSON
    keeps the last one silently), as are NaN/Infinity, nesting beyond json's recursion limit and lone UTF-16
    surrogates."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise CorpusInputError(f"{path}: a broken gzip file ({error})") from None

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON value")

    try:
        data = json.loads(decode(raw, path), object_pairs_hook=unique_keys, parse_constant=no_constant)
    except json.JSONDecodeError as error:
        raise CorpusInputError(
            f"{path}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    except RecursionError:
        raise CorpusInputError(f"{path}: nested too deeply to be a SWORDS file") from None
    except ValueError as error:  # a key given twice, NaN/Infinity
        raise CorpusInputError(f"{path}: {error}") from None
    refuse_surrogates(data, str(path))
    if not isinstance(data, dict):
        raise CorpusInputError(f"{path}: expected one JSON object with {', '.join(SECTIONS)}")
    for name in SECTIONS:
        if name not in data:
            raise CorpusInputError(
                f"{path}: missing section {name!r}; a SWORDS file has {', '.join(SECTIONS)}"
            )
        if not isinstance(data[name], dict):
            raise CorpusInputError(f"{path}: section {name!r} must be an object of id -> entry")
    return data


def _need(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise CorpusInputError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise CorpusInputError(f"{where}: missing field {key!r}")


def _context_text(context: Any, where: str) -> str:
    _need(context, ("context",), where)
    text = context["context"]
    if not isinstance(text, str) or not text.strip():
        raise CorpusInputError(f"{where}.context: must be a non-empty string")
    return text
