"""Property-based tests of every corpus reader on generated malformed files (issue 27).

Each reader (WiC, SWORDS, JSONL probe sets, text, traces) gets files made from its valid fixture by random damage
(bytes flipped, cut, inserted; JSON values replaced by odd ones: deep nesting, lone surrogates, NaN, repeated keys,
spans moved inside words) and must either read them, with every target span then covering a whole word, or refuse
them with its own input error in one line. Any other exception is a traceback a user would see.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_build.corpora import jsonl, swords, text, wic
from atlas_build.corpora.custom import CorpusInputError
from atlas_build.corpora.traces import TracesInputError, read_traces
from validation.rules import is_word_aligned

from .byo import FIXTURES

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROBE = (FIXTURES / "jsonl" / "probe.jsonl").read_bytes()
TEXTS = (FIXTURES / "jsonl" / "texts.jsonl").read_bytes()
SWORDS = (FIXTURES / "swords" / "swords-fixture_dev.json").read_bytes()
TRACES = (FIXTURES / "traces" / "sample.jsonl").read_bytes()
WIC = FIXTURES / "wic" / "WiC_dataset"

# JSON fragments a hand-edited or generated file may hold where a value belongs.
ODD_VALUES = [
    "[" * 5000 + "]" * 5000,
    '"\\ud800"',
    '"x\\udfff"',
    "NaN",
    "-Infinity",
    "1e999",
    "null",
    "true",
    '""',
    '"   "',
    "-1",
    "3.5",
    "{}",
    "[]",
    '"\\u0000"',
]


def damaged(raw: bytes, data: st.DataObject) -> bytes:
    """`raw` with one random kind of damage."""
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "value", "repeat-key", "span"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    if kind == "cut":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if kind == "insert":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    text = raw.decode("utf-8")
    spans = [m for m in re.finditer(r'"(target_start|target_end|offset)": (\d+)', text)]
    if kind == "span" and spans:
        # Move one span boundary a few characters: into a word, onto another word, past the text.
        m = data.draw(st.sampled_from(spans))
        moved = max(int(m.group(2)) + data.draw(st.integers(-4, 4)), 0)
        return (text[: m.start(2)] + str(moved) + text[m.end(2) :]).encode()
    if kind == "repeat-key":
        at = data.draw(st.sampled_from([i for i, c in enumerate(text) if c == "{"]))
        key = data.draw(st.sampled_from(['"id"', '"text"', '"target"', '"c1"', '"t1"', '"meta"']))
        return (text[: at + 1] + f"{key}: 1, {key}: 2, " + text[at + 1 :]).encode()
    # Replace one JSON value (after a ':') with an odd one.
    colons = [i for i, c in enumerate(text) if c == ":"]
    at = data.draw(st.sampled_from(colons))
    end = at + 1
    while end < len(text) and text[end] not in ",}\n":
        end += 1
    return (text[: at + 1] + " " + data.draw(st.sampled_from(ODD_VALUES)) + text[end:]).encode()


def spans_cover_words(tables) -> None:
    """What a reader returns routes only targets that cover whole words (validate's target-span rule)."""
    for table in tables.tables.values():
        if "target_start" not in table.column_names:
            continue
        for row in table.select(["text", "target_start", "target_end"]).to_pylist():
            if row["target_start"] is not None:
                start, end = row["target_start"], row["target_end"]
                assert 0 <= start < end <= len(row["text"])
                assert is_word_aligned(row["text"], start, end), row


def one_line(error: Exception) -> None:
    assert "\n" not in str(error).strip(), str(error)


def read_or_refuse(read, error_type=CorpusInputError):
    try:
        result = read()
    except error_type as error:
        one_line(error)
        return None
    return result


@SETTINGS
@given(data=st.data())
def test_jsonl_reader_on_damaged_probe_sets(tmp_path, data):
    path = tmp_path / "probe.jsonl"
    path.write_bytes(damaged(PROBE, data))
    tables = read_or_refuse(lambda: jsonl.read(path))
    if tables is not None:
        spans_cover_words(tables)


@SETTINGS
@given(data=st.data(), gzipped=st.booleans())
def test_swords_reader_on_damaged_files(tmp_path, data, gzipped):
    raw = damaged(SWORDS, data)
    path = tmp_path / ("swords_dev.json.gz" if gzipped else "swords_dev.json")
    if gzipped:
        packed = gzip.compress(raw)
        # Damage the compressed bytes too, now and then (a bad byte inside the deflate stream).
        if data.draw(st.booleans()):
            at = data.draw(st.integers(10, len(packed) - 1))
            packed = packed[:at] + bytes([packed[at] ^ 0x5A]) + packed[at + 1 :]
        raw = packed
    path.write_bytes(raw)
    tables = read_or_refuse(lambda: swords.read(path))
    if tables is not None:
        spans_cover_words(tables)


@SETTINGS
@given(data=st.data())
def test_text_reader_on_damaged_jsonl(tmp_path, data):
    path = tmp_path / "texts.jsonl"
    path.write_bytes(damaged(TEXTS, data))
    read_or_refuse(lambda: text.read(path))


@SETTINGS
@given(data=st.data())
def test_traces_reader_on_damaged_files(tmp_path, data):
    path = tmp_path / "traces.jsonl"
    path.write_bytes(damaged(TRACES, data))
    traces = read_or_refuse(lambda: read_traces(path), TracesInputError)
    for trace in traces or []:
        # What is accepted is stored: meta must be JSON (no NaN/Infinity) and every string UTF-8.
        json.dumps(trace.meta, allow_nan=False).encode("utf-8")
        for value in (trace.prompt, trace.reasoning, trace.answer):
            value.encode("utf-8")


@SETTINGS
@given(data=st.data())
def test_wic_reader_on_damaged_files(tmp_path, data):
    root = tmp_path / "wic"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(WIC, root)
    files = sorted(p for p in root.rglob("*.txt"))
    victim: Path = data.draw(st.sampled_from(files))
    raw = victim.read_bytes()
    kind = data.draw(st.sampled_from(["bytes", "index", "fields"]))
    if kind == "bytes":
        raw = damaged_bytes(raw, data)
    elif kind == "index" and victim.name.endswith(".data.txt"):
        # Point an index at another token (or past the end): the span must still hold the target word.
        lines = raw.decode().split("\n")
        number = data.draw(st.integers(0, max(len([x for x in lines if x]) - 1, 0)))
        fields = lines[number].split("\t")
        if len(fields) == 5:
            fields[2] = f"{data.draw(st.integers(0, 30))}-{data.draw(st.integers(0, 30))}"
            lines[number] = "\t".join(fields)
        raw = "\n".join(lines).encode()
    else:
        lines = raw.decode().split("\n")
        lines.insert(data.draw(st.integers(0, len(lines))), data.draw(st.text(max_size=20)))
        raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    victim.write_bytes(raw)
    tables = read_or_refuse(lambda: wic.read(root))
    if tables is not None:
        spans_cover_words(tables)
        for row in tables.tables["wic-examples"].to_pylist():
            assert row["target_form"] == row["text"][row["target_start"] : row["target_end"]]


def damaged_bytes(raw: bytes, data: st.DataObject) -> bytes:
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    return raw[:at] + data.draw(st.binary(min_size=0, max_size=4)) + raw[at + 1 :]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"id": "a", "text": "the bank", "target_start": 5, "target_end": 7}', "inside a word"),
        (
            '{"id": "a", "text": "the bank is here", "target_start": 9, "target_end": 11, "lemma": "bank"}',
            "not a form of the lemma 'bank'",
        ),
        ('{"id": "a", "text": "x\\ud800"}', "lone UTF-16 surrogate"),
        ('{"id": "a", "text": "x", "label": NaN}', "NaN is not a JSON value"),
    ],
)
def test_jsonl_spans_and_strings_refused_before_routing(tmp_path, line, words):
    path = tmp_path / "probe.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CorpusInputError, match=words):
        jsonl.read(path)


def test_swords_repeated_ids_and_spaced_targets_refused(tmp_path):
    data = json.loads(SWORDS)
    cid = next(iter(data["contexts"]))
    repeated = SWORDS.decode().replace(f'"{cid}":', f'"{cid}": {{"context": "other"}}, "{cid}":', 1)
    path = tmp_path / "swords_dev.json"
    path.write_text(repeated)
    with pytest.raises(CorpusInputError, match=f"key '{cid}' appears twice"):
        swords.read(path)
    tid, target = next(iter(data["targets"].items()))
    data["targets"][tid] = {**target, "target": f" {target['target']} ", "offset": target["offset"] - 1}
    path.write_text(json.dumps(data))
    with pytest.raises(CorpusInputError, match="without white space around it"):
        swords.read(path)


def test_swords_target_without_substitutes_is_counted_and_noted(tmp_path):
    data = json.loads(SWORDS)
    tid = next(iter(data["targets"]))
    dropped = [sid for sid, s in data["substitutes"].items() if s["target_id"] == tid]
    for sid in dropped:
        del data["substitutes"][sid]
        del data["substitute_labels"][sid]
    path = tmp_path / "swords_dev.json"
    path.write_text(json.dumps(data))
    tables = swords.read(path)
    assert tables.counts["targets_without_substitutes"] == 1
    assert any("have no substitute" in note and tid in note for note in tables.notes)


def test_wic_index_at_another_word_is_refused(tmp_path):
    root = shutil.copytree(WIC, tmp_path / "wic")
    data = sorted(root.rglob("*.data.txt"))[0]
    lines = data.read_text().split("\n")
    target, pos, indices, first, second = lines[0].split("\t")
    tokens = first.split()
    other = next(i for i, t in enumerate(tokens) if not t.lower().startswith(target[0].lower()))
    lines[0] = "\t".join([target, pos, f"{other}-{indices.split('-')[1]}", first, second])
    data.write_text("\n".join(lines))
    with pytest.raises(CorpusInputError, match=f"not a form of the lemma '{target}'"):
        wic.read(root)
