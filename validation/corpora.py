"""Suites of the text configs (senses, sense-pairs, substitutions, traces) and of `models`.

(Over 500 lines: one suite builder per text config, side by side, so that a reader compares their checks
in one place; the shared frame readers are at the top.)

Text configs are read batch by batch: each batch becomes a frame of its scalar columns plus derived rule
columns, validated by the config's suite. What later configs need from a text config is kept compactly:
the `TextRegistry` (per text: length, target span, non-whitespace prefix counts) for the routing checks,
and a `SenseIndex` (example_id -> lemma, pos, synset) for sense-pairs and substitutions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa

from atlas_build.atlas.schema import SENSE_PAIRS, SENSES, SUBSTITUTIONS, TRACES
from validation import expectations as ex
from validation.gxrun import FramePool, GXRunner
from validation.ledger import Ledger, Outcome
from validation.reading import column_batches, iter_batches, require
from validation.rules import (
    POS_VALUES,
    RELATIONS,
    SCORING_FUNCS,
    SEGMENT_NAMES,
    TEMPLATES,
    TOPK_METHODS,
    WEIGHT_DTYPES,
    is_form_of,
    is_word_aligned,
    non_whitespace_prefix,
)


@dataclass
class SenseIndex:
    """example_id -> (lemma, pos, synset) of every senses row (first occurrence of an id)."""

    rows: dict[str, tuple[str, str, str]] = field(default_factory=dict)


class TextRegistry:
    """Compact per-text facts of every routable text, indexed by an integer code.

    `codes[(corpus, id)]` is the text's code; per code: text length, target span (-1 when the corpus has
    none), and the offset of its entries in `prefix`, the texts' non-whitespace prefix counts (see
    `validation.rules.non_whitespace_prefix`). Memory is O(texts + characters), never O(tokens).
    """

    def __init__(self):
        self.codes: dict[tuple[str, str], int] = {}
        self.keys: list[tuple[str, str]] = []
        self._lengths: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._ends: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._prefix: list[np.ndarray] = []
        self._chars = 0
        self.length = self.target_start = self.target_end = self.offset = self.prefix = np.zeros(0, np.int64)

    def add(self, corpus: str, ids: list[str], texts: list[str], starts=None, ends=None) -> None:
        """Register a batch of texts (duplicate ids keep their first text; `ids-unique` reports them)."""
        prefix, offsets = non_whitespace_prefix(texts)
        base = len(self.keys)
        for i, text_id in enumerate(ids):
            self.keys.append((corpus, text_id))
            self.codes.setdefault((corpus, text_id), base + i)
        self._lengths.append(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
        none = np.full(len(texts), -1, dtype=np.int64)
        self._starts.append(none if starts is None else np.asarray(starts, dtype=np.int64))
        self._ends.append(none if ends is None else np.asarray(ends, dtype=np.int64))
        self._offsets.append(offsets + self._chars)
        self._prefix.append(prefix)
        self._chars += len(prefix)

    def freeze(self) -> None:
        """Concatenate the batches into flat arrays (call once every text config is read)."""
        self.length = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        self.target_start = np.concatenate(self._starts) if self._starts else np.zeros(0, np.int64)
        self.target_end = np.concatenate(self._ends) if self._ends else np.zeros(0, np.int64)
        self.offset = np.concatenate(self._offsets) if self._offsets else np.zeros(0, np.int64)
        self.prefix = np.concatenate(self._prefix) if self._prefix else np.zeros(0, np.int32)
        self._lengths, self._starts, self._ends, self._offsets = [], [], [], []
        self._prefix = [self.prefix]

    def __len__(self) -> int:
        return len(self.keys)


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(columns, index=pd.RangeIndex(len(next(iter(columns.values())))))


KEY_COLUMNS = ("example_id", "pair_id", "substitution_id", "trace_id", "example_a")


def _describer(ids: list[str], frame: pd.DataFrame, explain: dict[str, Callable[[int], str]]):
    def describe(pos: int, outcome: Outcome) -> str:
        if outcome.column in KEY_COLUMNS:
            value = frame[outcome.column].iloc[pos]
            if outcome.column == "example_a":
                value = (value, frame["example_b"].iloc[pos])
            return f"{value!r} occurs more than once" if value is not None else "null id"
        if outcome.column in explain:
            return f"{ids[pos]}: {explain[outcome.column](pos)}"
        value = frame[outcome.column].iloc[pos] if outcome.column in frame else None
        return f"{ids[pos]}: {outcome.column}={value!r}"

    return describe


def _validate_keys(gx: GXRunner, ledger: Ledger, config: str, keys: dict[str, list], suite) -> None:
    frame = _frame(keys)
    ids = frame[next(iter(keys))].astype(object).tolist()
    ledger.add_outcomes(config, gx.validate(suite, frame), _describer(ids, frame, {}))


def _key_expectations(id_column: str, compound: list[str] | None = None) -> list[tuple[str, Any]]:
    expectations = [
        ("ids-unique", gxe.ExpectColumnValuesToNotBeNull(column=id_column)),
        ("ids-unique", gxe.ExpectColumnValuesToBeUnique(column=id_column)),
    ]
    if compound:
        expectations.append(("ids-unique", gxe.ExpectCompoundColumnsToBeUnique(column_list=compound)))
    return expectations


def _key_suite(gx: GXRunner, config: str, id_column: str, compound: list[str] | None = None):
    return gx.add_suite(f"{config}-keys", _key_expectations(id_column, compound))


def _pool(
    gx: GXRunner, ledger: Ledger, config: str, expectations, id_column: str, compound=None
) -> FramePool:
    """A pool for the config's row suite; when every row fits one GX run, the uniqueness expectations run
    in that same run (the frames carry the key columns), saving a second pass over the ids."""
    suite = gx.add_suite(config, expectations())
    whole = gx.add_suite(f"{config}-whole", expectations() + _key_expectations(id_column, compound))
    return FramePool(gx, suite, ledger, config, whole_suite=whole)


def _span_facts(texts: list[str], starts: np.ndarray, ends: np.ndarray, forms: list[str], lemmas: list[str]):
    inside, aligned, plausible = [], [], []
    for text, start, end, form, lemma in zip(
        texts, starts.tolist(), ends.tolist(), forms, lemmas, strict=True
    ):
        ok = 0 <= start < end <= len(text)
        inside.append(ok)
        aligned.append(ok and is_word_aligned(text, start, end))
        plausible.append(is_form_of(form, lemma))
    return inside, aligned, plausible


# ---- senses ------------------------------------------------------------------------------------------

SENSES_COLUMNS = [
    "example_id",
    "lemma",
    "pos",
    "synset",
    "sense_number",
    "lemma_n_senses",
    "text",
    "target_start",
    "target_end",
    "target_form",
]


def check_senses(
    files: list[Path],
    gx: GXRunner,
    ledger: Ledger,
    registry: TextRegistry,
    index: SenseIndex,
    batch_rows: int,
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToNotBeNull(column="lemma")),
            ("value-sets", gxe.ExpectColumnValuesToNotBeNull(column="synset")),
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=list(POS_VALUES))),
            ("value-sets", gxe.ExpectColumnValuesToBeBetween(column="sense_number", min_value=1)),
            (
                "value-sets",
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="lemma_n_senses", column_B="sense_number", or_equal=True
                ),
            ),
            ("target-span", ex.ExpectTargetSpanInsideText()),
            ("target-span", ex.ExpectTargetFormAtSpan()),
            ("target-span", ex.ExpectTargetSpanWordAligned()),
            ("target-span", ex.ExpectTargetFormOfLemma()),
        ]

    pool = _pool(gx, ledger, SENSES, expectations, "example_id")
    all_ids: list[str] = []
    rows = 0
    for n_rows, col in column_batches(files, SENSES_COLUMNS, SENSES, batch_rows, as_lists=False):
        ids = col["example_id"].to_pylist()
        texts = col["text"].to_pylist()
        forms = col["target_form"].to_pylist()
        lemmas = col["lemma"].to_pylist()
        starts = col["target_start"].to_numpy(zero_copy_only=False).astype(np.int64)
        ends = col["target_end"].to_numpy(zero_copy_only=False).astype(np.int64)
        inside, aligned, plausible = _span_facts(texts, starts, ends, forms, lemmas)
        at_span = [
            t[s:e] == f for t, s, e, f in zip(texts, starts.tolist(), ends.tolist(), forms, strict=True)
        ]
        frame = _frame(
            {
                "lemma": lemmas,
                "example_id": ids,
                "synset": col["synset"].to_pylist(),
                "pos": col["pos"].to_pylist(),
                "sense_number": col["sense_number"].to_numpy(zero_copy_only=False),
                "lemma_n_senses": col["lemma_n_senses"].to_numpy(zero_copy_only=False),
                "span_inside": inside,
                "form_at_span": at_span,
                "span_word_aligned": aligned,
                "form_of_lemma": plausible,
            }
        )

        def span(i, texts=texts, starts=starts, ends=ends, forms=forms, lemmas=lemmas):
            s, e = int(starts[i]), int(ends[i])
            held = texts[i][max(s, 0) : max(e, 0)]
            return f"text[{s}:{e}]={held!r}, target_form={forms[i]!r}, lemma={lemmas[i]!r}"

        explain = dict.fromkeys(("span_inside", "form_at_span", "span_word_aligned", "form_of_lemma"), span)
        pool.add(frame, _describer(ids, frame, explain))
        registry.add(SENSES, ids, texts, starts, ends)
        for example_id, lemma, pos, synset in zip(ids, lemmas, frame["pos"], frame["synset"], strict=True):
            index.rows.setdefault(example_id, (lemma, pos, synset))
        all_ids.extend(ids)
        rows += n_rows
    if not pool.finish():
        _validate_keys(gx, ledger, SENSES, {"example_id": all_ids}, _key_suite(gx, SENSES, "example_id"))
    return rows


# ---- sense-pairs ---------------------------------------------------------------------------------------

PAIRS_COLUMNS = ["pair_id", "lemma", "pos", "example_a", "example_b", "synset_a", "synset_b", "same_sense"]


def check_sense_pairs(
    files: list[Path], gx: GXRunner, ledger: Ledger, index: SenseIndex, batch_rows: int
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=list(POS_VALUES))),
            ("references", ex.ExpectReferencedExampleExists()),
            ("references", gxe.ExpectColumnValuesToBeInSet(column="examples_distinct", value_set=[True])),
            ("references", ex.ExpectReferencedExampleOfLemma()),
            ("references", ex.ExpectReferencedSynsetsMatch()),
            (
                "same-sense",
                gxe.ExpectColumnPairValuesToBeEqual(column_A="same_sense", column_B="synsets_equal"),
            ),
        ]

    pool = _pool(gx, ledger, SENSE_PAIRS, expectations, "pair_id", ["example_a", "example_b"])
    keys: dict[str, list] = {"pair_id": [], "example_a": [], "example_b": []}
    rows = 0
    for n_rows, c in column_batches(files, PAIRS_COLUMNS, SENSE_PAIRS, batch_rows):
        exists, of_lemma, synsets = [], [], []
        for lemma, pos, a, b, syn_a, syn_b in zip(
            c["lemma"], c["pos"], c["example_a"], c["example_b"], c["synset_a"], c["synset_b"], strict=True
        ):
            row_a, row_b = index.rows.get(a), index.rows.get(b)
            exists.append(row_a is not None and row_b is not None)
            of_lemma.append(
                row_a is not None
                and row_b is not None
                and row_a[:2] == (lemma, pos)
                and row_b[:2] == (lemma, pos)
            )
            synsets.append(row_a is not None and row_b is not None and (row_a[2], row_b[2]) == (syn_a, syn_b))
        frame = _frame(
            {
                "pos": c["pos"],
                "pair_id": c["pair_id"],
                "example_a": c["example_a"],
                "example_b": c["example_b"],
                "example_exists": exists,
                "examples_distinct": [a != b for a, b in zip(c["example_a"], c["example_b"], strict=True)],
                "example_of_lemma": of_lemma,
                "synsets_match": synsets,
                "same_sense": c["same_sense"],
                "synsets_equal": [a == b for a, b in zip(c["synset_a"], c["synset_b"], strict=True)],
            }
        )

        def pair(i, c=c):
            a, b = c["example_a"][i], c["example_b"][i]
            return (
                f"lemma={c['lemma'][i]!r} example_a={a!r} {index.rows.get(a)} example_b={b!r} "
                f"{index.rows.get(b)} synsets=({c['synset_a'][i]}, {c['synset_b'][i]}) "
                f"same_sense={c['same_sense'][i]}"
            )

        explain = dict.fromkeys(
            ("example_exists", "examples_distinct", "example_of_lemma", "synsets_match", "same_sense"), pair
        )
        pool.add(frame, _describer(c["pair_id"], frame, explain))
        for name in keys:
            keys[name].extend(c[name])
        rows += n_rows
    if not pool.finish():
        suite = _key_suite(gx, SENSE_PAIRS, "pair_id", ["example_a", "example_b"])
        _validate_keys(gx, ledger, SENSE_PAIRS, keys, suite)
    return rows


# ---- substitutions -------------------------------------------------------------------------------------

SUBSTITUTION_COLUMNS = [
    "substitution_id",
    "example_id",
    "lemma",
    "pos",
    "relation",
    "substitute",
    "substitute_synset",
    "text",
    "target_start",
    "target_end",
]


class ExpectRelationAgreesWithSynsets(gxe.ExpectColumnValuesToBeInSet):
    """synonym: substitute_synset is the base example's synset; other-sense: it is another one."""

    column: str = "relation_consistent"
    value_set: list = [True]
    description: str = "relation agrees with the synsets"


def check_substitutions(
    files: list[Path],
    gx: GXRunner,
    ledger: Ledger,
    registry: TextRegistry,
    index: SenseIndex,
    batch_rows: int,
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=list(POS_VALUES))),
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="relation", value_set=list(RELATIONS))),
            ("references", ex.ExpectReferencedExampleExists()),
            ("references", ex.ExpectReferencedExampleOfLemma()),
            ("references", ExpectRelationAgreesWithSynsets()),
            ("target-span", ex.ExpectTargetSpanInsideText()),
            ("target-span", ex.ExpectTargetSpanWordAligned()),
            ("target-span", ex.ExpectTargetFormOfLemma()),
        ]

    pool = _pool(gx, ledger, SUBSTITUTIONS, expectations, "substitution_id")
    all_ids: list[str] = []
    rows = 0
    for n_rows, c in column_batches(files, SUBSTITUTION_COLUMNS, SUBSTITUTIONS, batch_rows, as_lists=False):
        ids = c["substitution_id"].to_pylist()
        texts = c["text"].to_pylist()
        starts = c["target_start"].to_numpy(zero_copy_only=False).astype(np.int64)
        ends = c["target_end"].to_numpy(zero_copy_only=False).astype(np.int64)
        substitutes = c["substitute"].to_pylist()
        forms = [
            t[max(s, 0) : max(e, 0)] for t, s, e in zip(texts, starts.tolist(), ends.tolist(), strict=True)
        ]
        inside, aligned, plausible = _span_facts(texts, starts, ends, forms, substitutes)
        exists, of_lemma, relation_ok = [], [], []
        for base, lemma, pos, relation, synset in zip(
            c["example_id"].to_pylist(),
            c["lemma"].to_pylist(),
            c["pos"].to_pylist(),
            c["relation"].to_pylist(),
            c["substitute_synset"].to_pylist(),
            strict=True,
        ):
            row = index.rows.get(base)
            exists.append(row is not None)
            of_lemma.append(row is not None and row[:2] == (lemma, pos))
            relation_ok.append(
                row is not None
                and (relation != "synonym" or synset == row[2])
                and (relation != "other-sense" or synset != row[2])
            )
        frame = _frame(
            {
                "pos": c["pos"].to_pylist(),
                "substitution_id": ids,
                "relation": c["relation"].to_pylist(),
                "example_exists": exists,
                "example_of_lemma": of_lemma,
                "relation_consistent": relation_ok,
                "span_inside": inside,
                "span_word_aligned": aligned,
                "form_of_lemma": plausible,
            }
        )

        def span(i, texts=texts, starts=starts, ends=ends, substitutes=substitutes, forms=forms):
            return f"text[{starts[i]}:{ends[i]}]={forms[i]!r}, substitute={substitutes[i]!r}"

        def base(i, c=c):
            example_id = c["example_id"][i].as_py()
            return (
                f"example_id={example_id!r} {index.rows.get(example_id)} lemma={c['lemma'][i].as_py()!r} "
                f"relation={c['relation'][i].as_py()!r} "
                f"substitute_synset={c['substitute_synset'][i].as_py()!r}"
            )

        explain = dict.fromkeys(("span_inside", "span_word_aligned", "form_of_lemma"), span)
        explain.update(dict.fromkeys(("example_exists", "example_of_lemma", "relation_consistent"), base))
        pool.add(frame, _describer(ids, frame, explain))
        registry.add(SUBSTITUTIONS, ids, texts, starts, ends)
        all_ids.extend(ids)
        rows += n_rows
    if not pool.finish():
        suite = _key_suite(gx, SUBSTITUTIONS, "substitution_id")
        _validate_keys(gx, ledger, SUBSTITUTIONS, {"substitution_id": all_ids}, suite)
    return rows


# ---- traces --------------------------------------------------------------------------------------------

TRACE_COLUMNS = ["trace_id", "text", "template", "segments", "meta"]


def _segments_ok(segments: list[dict] | None, length: int) -> bool:
    previous_end = 0
    for segment in segments or []:
        start, end = segment.get("start"), segment.get("end")
        if segment.get("name") not in SEGMENT_NAMES or start is None or end is None:
            return False
        if not previous_end <= start <= end <= length:
            return False
        previous_end = end
    return True


def _meta_ok(meta: str | None) -> bool:
    if meta is None:
        return True
    try:
        return isinstance(json.loads(meta), dict)
    except ValueError:
        return False


def check_traces(
    files: list[Path], gx: GXRunner, ledger: Ledger, registry: TextRegistry, batch_rows: int
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="template", value_set=list(TEMPLATES))),
            ("segments", ex.ExpectTraceSegmentsValid()),
            ("segments", ex.ExpectJsonObjectOrNull()),
        ]

    pool = _pool(gx, ledger, TRACES, expectations, "trace_id")
    all_ids: list[str] = []
    rows = 0
    for batch in iter_batches(files, TRACE_COLUMNS, batch_rows):
        require(batch, TRACE_COLUMNS, TRACES)
        ids = batch.column("trace_id").to_pylist()
        texts = batch.column("text").to_pylist()
        segments = batch.column("segments").to_pylist()
        frame = _frame(
            {
                "template": batch.column("template").to_pylist(),
                "trace_id": ids,
                "segments_ok": [_segments_ok(s, len(t)) for s, t in zip(segments, texts, strict=True)],
                "meta_ok": [_meta_ok(m) for m in batch.column("meta").to_pylist()],
            }
        )
        explain = {"segments_ok": lambda i, s=segments, t=texts: f"segments={s[i]} len(text)={len(t[i])}"}
        pool.add(frame, _describer(ids, frame, explain))
        registry.add(TRACES, ids, texts)
        all_ids.extend(ids)
        rows += batch.num_rows
    if not pool.finish():
        _validate_keys(gx, ledger, TRACES, {"trace_id": all_ids}, _key_suite(gx, TRACES, "trace_id"))
    return rows


# ---- models --------------------------------------------------------------------------------------------

MODELS_COLUMNS = [
    "model_slug",
    "num_hidden_layers",
    "moe_layers",
    "n_routed_experts",
    "top_k",
    "scoring_func",
    "topk_method",
    "norm_topk_prob",
    "routed_scaling_factor",
    "weights_dtype",
]


def _moe_layers_ok(layers: list[int] | None, num_hidden_layers: int | None) -> bool:
    if not layers or num_hidden_layers is None:
        return False
    return (
        all(0 <= a < b for a, b in zip(layers, layers[1:], strict=False))
        and layers[0] >= 0
        and layers[-1] < num_hidden_layers
    )


def check_models(table: pa.Table, gx: GXRunner, ledger: Ledger) -> list[dict]:
    """Validate the models rows; returns them as dicts."""
    require(table, MODELS_COLUMNS, "models")
    rows = table.to_pylist()
    if not rows:
        return rows
    frame = _frame(
        {
            "model_slug": [r["model_slug"] for r in rows],
            "num_hidden_layers": [r["num_hidden_layers"] for r in rows],
            "n_routed_experts": [r["n_routed_experts"] for r in rows],
            "top_k": [r["top_k"] for r in rows],
            "scoring_func": [r["scoring_func"] for r in rows],
            "topk_method": [r["topk_method"] for r in rows],
            "routed_scaling_factor": [r["routed_scaling_factor"] for r in rows],
            "weights_dtype": [r["weights_dtype"] for r in rows],
            "moe_layers_ok": [_moe_layers_ok(r["moe_layers"], r["num_hidden_layers"]) for r in rows],
        }
    )
    suite = gx.add_suite(
        "models",
        [
            ("ids-unique", gxe.ExpectColumnValuesToNotBeNull(column="model_slug")),
            ("ids-unique", gxe.ExpectColumnValuesToBeUnique(column="model_slug")),
            ("models-fields", gxe.ExpectColumnValuesToBeBetween(column="num_hidden_layers", min_value=1)),
            ("models-fields", gxe.ExpectColumnValuesToBeBetween(column="n_routed_experts", min_value=1)),
            ("models-fields", gxe.ExpectColumnValuesToBeBetween(column="top_k", min_value=1)),
            (
                "models-fields",
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="n_routed_experts", column_B="top_k", or_equal=True
                ),
            ),
            (
                "models-fields",
                gxe.ExpectColumnValuesToBeInSet(column="scoring_func", value_set=list(SCORING_FUNCS)),
            ),
            (
                "models-fields",
                gxe.ExpectColumnValuesToBeInSet(column="topk_method", value_set=list(TOPK_METHODS)),
            ),
            (
                "models-fields",
                gxe.ExpectColumnValuesToBeInSet(column="weights_dtype", value_set=list(WEIGHT_DTYPES)),
            ),
            (
                "models-fields",
                gxe.ExpectColumnValuesToBeBetween(
                    column="routed_scaling_factor", min_value=0, strict_min=True
                ),
            ),
            ("models-fields", ex.ExpectMoeLayersValid()),
        ],
    )
    slugs = [str(r["model_slug"]) for r in rows]
    explain = {
        "moe_layers_ok": lambda i: (
            f"moe_layers={rows[i]['moe_layers']} num_hidden_layers={rows[i]['num_hidden_layers']}"
        )
    }
    explain["n_routed_experts"] = lambda i: (
        f"n_routed_experts={rows[i]['n_routed_experts']} top_k={rows[i]['top_k']}"
    )
    ledger.add_outcomes("models", gx.validate(suite, frame), _describer(slugs, frame, explain))
    return rows
