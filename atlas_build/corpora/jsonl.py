"""Any probe set as JSONL -> `jsonl-examples` (and `jsonl-pairs` when lines name a partner).

One JSON object per line (blank lines are skipped)::

    {"id": "b1", "text": "She sat on the bank.", "target_start": 15, "target_end": 19, "label": "bank%river",
     "pair_with": "b2", "same": false}

- `id` (string or integer, unique) and `text` (non-empty string) are required.
- `target_start`/`target_end`: the target's character span in `text` (end exclusive), both or neither.
- `label`: the target's sense or group id (string or integer), optional.
- `lemma` (default: the target as written, lower-cased), `pos` (n, v, a or r) and `split`: optional.
- `pair_with`: the id of another line to pair this one with, and `same`: whether both targets have the same
  sense. `same` may be left out when both lines have a `label` (it is then whether the labels are equal); when
  given with both labels, it must agree with them. Both lines of a pair need a target and the same lemma.

Any other field is refused (a misspelt `target_strat` would otherwise be silently lost). The whole file is
checked before anything is written; errors name the file, the line and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlas_build.atlas.schema import JSONL_EXAMPLES, JSONL_PAIRS
from atlas_build.corpora.custom import (
    POS_LETTERS,
    CorpusInputError,
    CorpusTables,
    char_span,
    file_entry,
    json_objects,
    read_bytes,
    table,
    target_word,
)

KIND = "jsonl"
FIELDS = ("id", "text", "target_start", "target_end", "label", "lemma", "pos", "split", "pair_with", "same")
LICENSE = "not recorded: a JSONL probe set supplied by the builder; see where the file came from"
NOTES = (
    "jsonl-examples / jsonl-pairs: a JSONL probe set (id, text, optional target span, label, lemma, pos, "
    "split); pairs from `pair_with`, same_sense from `same` or, without it, from equal labels.",
)


def _id(value: Any, where: str, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise CorpusInputError(
            f"{where}: field {name!r} must be a non-empty string or an integer, got {value!r}"
        )
    return value


def _optional_str(record: dict, name: str, where: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and name == "label":
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise CorpusInputError(f"{where}: field {name!r} must be a non-empty string or null, got {value!r}")
    return value


def read(path: str | Path, **_options) -> CorpusTables:
    """Read and check a whole JSONL probe file.

    Returns:
        `jsonl-examples` (one row per line) and, when any line has `pair_with`, `jsonl-pairs`.

    Raises:
        CorpusInputError: naming the file, line and field of the first problem.
    """
    path = Path(path)
    raw = read_bytes(path, "--texts file")
    examples: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    wanted: list[tuple[int, str, str, bool | None]] = []  # (line, id, partner, same)
    for number, where, record in json_objects(raw, path):
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise CorpusInputError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; a line has {', '.join(FIELDS)}"
            )
        for name in ("id", "text"):
            if name not in record:
                raise CorpusInputError(f"{where}: missing field {name!r}")
        example_id = _id(record["id"], where, "id")
        if example_id in lines:
            raise CorpusInputError(
                f"{where}: duplicate id {example_id!r} (first on line {lines[example_id]}); ids must be unique"
            )
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise CorpusInputError(f"{where}: field 'text' must be a non-empty string, got {text!r}")
        has_start, has_end = record.get("target_start") is not None, record.get("target_end") is not None
        if has_start != has_end:
            raise CorpusInputError(
                f"{where}: fields 'target_start' and 'target_end' go together: give both or neither"
            )
        start = end = form = None
        if has_start:
            start, end = char_span(text, record["target_start"], record["target_end"], where)
            form = text[start:end]
        lemma = _optional_str(record, "lemma", where)
        if lemma is not None and form is None:
            raise CorpusInputError(f"{where}: field 'lemma' names a target, but the line has no target span")
        if form is not None:
            target_word(text, start, end, lemma, where)
        pos = record.get("pos")
        if pos is not None and pos not in POS_LETTERS:
            raise CorpusInputError(
                f"{where}: field 'pos' must be one of {', '.join(POS_LETTERS)} or null, got {pos!r}"
            )
        examples[example_id] = {
            "example_id": example_id,
            "lemma": lemma if lemma is not None else (form.lower() if form is not None else None),
            "pos": pos,
            "label": _optional_str(record, "label", where),
            "text": text,
            "target_start": start,
            "target_end": end,
            "target_form": form,
            "split": _optional_str(record, "split", where),
            "source": f"{KIND}:{path.name}",
        }
        lines[example_id] = number
        if record.get("pair_with") is not None:
            same = record.get("same")
            if same is not None and not isinstance(same, bool):
                raise CorpusInputError(f"{where}: field 'same' must be true, false or null, got {same!r}")
            wanted.append((number, example_id, _id(record["pair_with"], where, "pair_with"), same))
        elif record.get("same") is not None:
            raise CorpusInputError(f"{where}: field 'same' needs 'pair_with' (the id of the other line)")
    if not examples:
        raise CorpusInputError(f"{path} is empty: expected one JSON object per line ({', '.join(FIELDS)})")
    pairs = _pairs(path, examples, wanted)
    tables = {JSONL_EXAMPLES: table(JSONL_EXAMPLES, sorted(examples.values(), key=lambda r: r["example_id"]))}
    if pairs:
        tables[JSONL_PAIRS] = table(JSONL_PAIRS, sorted(pairs, key=lambda r: r["pair_id"]))
    same = sum(p["same_sense"] for p in pairs)
    return CorpusTables(
        kind=KIND,
        tables=tables,
        inputs=(file_entry(path, raw),),
        source=f"JSONL probe set {path.name}",
        license=LICENSE,
        notes=NOTES,
        counts={
            "examples": len(examples),
            "with_target": sum(e["target_start"] is not None for e in examples.values()),
            "pairs": {"total": len(pairs), "same": same, "different": len(pairs) - same},
        },
    )


def _pairs(
    path: Path, examples: dict[str, dict], wanted: list[tuple[int, str, str, bool | None]]
) -> list[dict]:
    pairs, seen = [], {}
    for number, a, b, same in wanted:
        where = f"{path}, line {number}"
        if b not in examples:
            raise CorpusInputError(f"{where}: field 'pair_with': no line has id {b!r}")
        if b == a:
            raise CorpusInputError(f"{where}: field 'pair_with': a line cannot pair with itself")
        key = frozenset((a, b))
        if key in seen:
            raise CorpusInputError(
                f"{where}: field 'pair_with': the pair ({a!r}, {b!r}) is already given on line {seen[key]}"
            )
        seen[key] = number
        ea, eb = examples[a], examples[b]
        for example in (ea, eb):
            if example["target_start"] is None:
                raise CorpusInputError(
                    f"{where}: field 'pair_with': {example['example_id']!r} has no target span; both lines of a pair need one"
                )
        if (ea["lemma"], ea["pos"]) != (eb["lemma"], eb["pos"]):
            raise CorpusInputError(
                f"{where}: field 'pair_with': the two targets differ in lemma or pos ({ea['lemma']!r} {ea['pos']}, "
                f"{eb['lemma']!r} {eb['pos']}); give both lines the same 'lemma' and 'pos'"
            )
        labelled = ea["label"] is not None and eb["label"] is not None
        if same is None and not labelled:
            raise CorpusInputError(
                f"{where}: field 'same' is needed: say whether the two targets share a sense (or give both lines a 'label')"
            )
        if same is not None and labelled and same != (ea["label"] == eb["label"]):
            raise CorpusInputError(
                f"{where}: field 'same' is {str(same).lower()} but the labels are {ea['label']!r} and {eb['label']!r}"
            )
        pairs.append(
            {
                "pair_id": f"{a}|{b}",
                "lemma": ea["lemma"],
                "pos": ea["pos"],
                "example_a": a,
                "example_b": b,
                "same_sense": same if same is not None else ea["label"] == eb["label"],
                "split": ea["split"] if ea["split"] == eb["split"] else None,
                "source": f"{KIND}:{path.name}",
            }
        )
    return pairs
