"""Suites of the user's corpora: wic-*, swords-*, jsonl-* and texts (`atlas build --corpus wic|swords|jsonl|text`).

The same rigour as the WordNet configs, with each corpus's own rules:

- examples (`wic-examples`, `swords-examples`, `jsonl-examples`): unique ids; pos in n/v/a/r or null; the target
  span inside the text, word-aligned, equal to `target_form` and a form of the lemma; the target fields all set or
  all null (wic and swords: always set).
- pairs (`wic-pairs`, `jsonl-pairs`): unique ids and (example_a, example_b); both examples exist in the corpus's
  examples config, differ, have a target and the pair's lemma and pos; where both examples carry a `label`,
  `same_sense` equals (label_a == label_b).
- substitutions (`swords-substitutions`): unique ids; the base example exists with the same lemma and pos; the
  text is the base text with its target span replaced by the substitute's span (same start, same text around
  it); score in [0, 1], n_labels >= 1, and the relation is the one the score gives (thresholds in
  `atlas_build.atlas.schema`: SWORDS_RELATIONS, SWORDS_ACCEPTABLE_ABOVE).
- texts: unique ids, non-empty texts.

Every routed text is registered in the `TextRegistry`, so the routing checks (source-exists, char-offsets,
token-coverage, target-tokens) cover these corpora too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np

from atlas_build.atlas.schema import (
    JSONL_EXAMPLES,
    JSONL_PAIRS,
    SWORDS_ACCEPTABLE_ABOVE,
    SWORDS_EXAMPLES,
    SWORDS_RELATIONS,
    SWORDS_SUBSTITUTIONS,
    TEXTS,
    WIC_EXAMPLES,
    WIC_PAIRS,
)
from validation import expectations as ex
from validation.corpora import TextRegistry, _describer, _frame, _key_suite, _pool, _validate_keys
from validation.gxrun import GXRunner
from validation.ledger import Ledger
from validation.reading import column_batches, iter_batches, require
from validation.rules import is_form_of, is_word_aligned

POS_LETTERS = ["n", "v", "a", "r"]

EXAMPLE_CHECKS = ("ids-unique", "value-sets", "target-span")
PAIR_CHECKS = ("ids-unique", "value-sets", "references", "same-sense")
SUBSTITUTION_CHECKS = ("ids-unique", "value-sets", "references", "target-span")
TEXT_CHECKS = ("ids-unique", "value-sets")

# Config -> the checks it reports (in the order the runner reads the configs: examples before what cites them).
CHECKS: dict[str, tuple[str, ...]] = {
    WIC_EXAMPLES: EXAMPLE_CHECKS,
    WIC_PAIRS: PAIR_CHECKS,
    SWORDS_EXAMPLES: EXAMPLE_CHECKS,
    SWORDS_SUBSTITUTIONS: SUBSTITUTION_CHECKS,
    JSONL_EXAMPLES: EXAMPLE_CHECKS,
    JSONL_PAIRS: PAIR_CHECKS,
    TEXTS: TEXT_CHECKS,
}
# Examples configs whose every row must have a target (WiC and SWORDS always give one).
TARGET_REQUIRED = (WIC_EXAMPLES, SWORDS_EXAMPLES)


class ExpectTargetFieldsConsistent(gxe.ExpectColumnValuesToBeInSet):
    """target_start, target_end, target_form and lemma are all set or all null (wic, swords: set)."""

    column: str = "target_fields_ok"
    value_set: list = [True]
    description: str = "the target fields are all set or all null"


class ExpectPairExamplesHaveTargets(gxe.ExpectColumnValuesToBeInSet):
    """Both examples of a pair have a target span."""

    column: str = "examples_have_targets"
    value_set: list = [True]
    description: str = "both examples of the pair have a target"


class ExpectSameSenseAgreesWithLabels(gxe.ExpectColumnValuesToBeInSet):
    """same_sense == (label_a == label_b) where both examples carry a label."""

    column: str = "labels_agree"
    value_set: list = [True]
    description: str = "same_sense agrees with the examples' labels"


class ExpectSubstitutedTextMatchesBase(gxe.ExpectColumnValuesToBeInSet):
    """The text is the base example's text with its target span replaced by the substitute's span."""

    column: str = "text_matches_base"
    value_set: list = [True]
    description: str = "the text is the base text with the target replaced"


class ExpectRelationMatchesScore(gxe.ExpectColumnValuesToBeInSet):
    """relation is the one the score gives (acceptable > threshold >= conceivable > 0 = rejected)."""

    column: str = "relation_matches_score"
    value_set: list = [True]
    description: str = "the relation agrees with the human score"


@dataclass
class ExampleIndex:
    """example_id -> (lemma, pos, label, has_target, text, target_start, target_end) of one examples config."""

    rows: dict[str, tuple] = field(default_factory=dict)


def relation_of(score: float) -> str:
    if score > SWORDS_ACCEPTABLE_ABOVE:
        return SWORDS_RELATIONS[0]
    return SWORDS_RELATIONS[1] if score > 0 else SWORDS_RELATIONS[2]


def readers(
    gx: GXRunner, ledger: Ledger, registry: TextRegistry, batch_rows: int
) -> dict[str, Callable[[list[Path]], int]]:
    """config -> reader(files) -> rows, in dependency order; the readers share the examples' indexes."""
    indexes = {WIC_EXAMPLES: ExampleIndex(), SWORDS_EXAMPLES: ExampleIndex(), JSONL_EXAMPLES: ExampleIndex()}

    def examples(config):
        return lambda paths: check_examples(config, paths, gx, ledger, registry, indexes[config], batch_rows)

    return {
        WIC_EXAMPLES: examples(WIC_EXAMPLES),
        WIC_PAIRS: lambda paths: check_pairs(WIC_PAIRS, paths, gx, ledger, indexes[WIC_EXAMPLES], batch_rows),
        SWORDS_EXAMPLES: examples(SWORDS_EXAMPLES),
        SWORDS_SUBSTITUTIONS: lambda paths: check_substitutions(
            SWORDS_SUBSTITUTIONS, paths, gx, ledger, registry, indexes[SWORDS_EXAMPLES], batch_rows
        ),
        JSONL_EXAMPLES: examples(JSONL_EXAMPLES),
        JSONL_PAIRS: lambda paths: check_pairs(
            JSONL_PAIRS, paths, gx, ledger, indexes[JSONL_EXAMPLES], batch_rows
        ),
        TEXTS: lambda paths: check_texts(TEXTS, paths, gx, ledger, registry, batch_rows),
    }


def _spans(texts, starts, ends):
    """Per row: (start, end) as ints, or (-1, -1) without a target."""
    return [
        (-1, -1) if s is None or e is None else (int(s), int(e)) for s, e in zip(starts, ends, strict=True)
    ]


# ---- examples ------------------------------------------------------------------------------------------

EXAMPLE_COLUMNS = ["example_id", "lemma", "pos", "label", "text", "target_start", "target_end", "target_form"]


def check_examples(
    config: str,
    files: list[Path],
    gx: GXRunner,
    ledger: Ledger,
    registry: TextRegistry,
    index: ExampleIndex,
    batch_rows: int,
) -> int:
    required = config in TARGET_REQUIRED

    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=POS_LETTERS)),
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="text_nonempty", value_set=[True])),
            ("target-span", ExpectTargetFieldsConsistent()),
            ("target-span", ex.ExpectTargetSpanInsideText()),
            ("target-span", ex.ExpectTargetFormAtSpan()),
            ("target-span", ex.ExpectTargetSpanWordAligned()),
            ("target-span", ex.ExpectTargetFormOfLemma()),
        ]

    pool = _pool(gx, ledger, config, expectations, "example_id")
    all_ids: list[str] = []
    rows = 0
    for n_rows, c in column_batches(files, EXAMPLE_COLUMNS, config, batch_rows):
        spans = _spans(c["text"], c["target_start"], c["target_end"])
        consistent, inside, at_span, aligned, of_lemma = [], [], [], [], []
        for text, (start, end), s, e, form, lemma in zip(
            c["text"], spans, c["target_start"], c["target_end"], c["target_form"], c["lemma"], strict=True
        ):
            given = [v is not None for v in (s, e, form, lemma)]
            consistent.append(all(given) or (not any(given) and not required))
            has = start >= 0
            ok = has and 0 <= start < end <= len(text)
            # Rows without a target have no span to check: only target-fields-consistent speaks for them.
            inside.append(ok or not has)
            at_span.append(not has or (ok and text[start:end] == form))
            aligned.append(not has or (ok and is_word_aligned(text, start, end)))
            of_lemma.append(not has or (form is not None and lemma is not None and is_form_of(form, lemma)))
        frame = _frame(
            {
                "example_id": c["example_id"],
                "pos": c["pos"],
                "text_nonempty": [bool(t and t.strip()) for t in c["text"]],
                "target_fields_ok": consistent,
                "span_inside": inside,
                "form_at_span": at_span,
                "span_word_aligned": aligned,
                "form_of_lemma": of_lemma,
            }
        )

        def span(i, c=c, spans=spans):
            s, e = spans[i]
            held = c["text"][i][max(s, 0) : max(e, 0)]
            return (
                f"text[{c['target_start'][i]}:{c['target_end'][i]}]={held!r}, target_form={c['target_form'][i]!r}, "
                f"lemma={c['lemma'][i]!r}"
            )

        explain = dict.fromkeys(
            ("target_fields_ok", "span_inside", "form_at_span", "span_word_aligned", "form_of_lemma"), span
        )
        pool.add(frame, _describer(c["example_id"], frame, explain))
        registry.add(config, c["example_id"], c["text"], [s for s, _ in spans], [e for _, e in spans])
        for i, example_id in enumerate(c["example_id"]):
            s, e = spans[i]
            entry = (c["lemma"][i], c["pos"][i], c["label"][i], s >= 0, c["text"][i], s, e)
            index.rows.setdefault(example_id, entry)
        all_ids.extend(c["example_id"])
        rows += n_rows
    if not pool.finish():
        _validate_keys(gx, ledger, config, {"example_id": all_ids}, _key_suite(gx, config, "example_id"))
    return rows


# ---- pairs ---------------------------------------------------------------------------------------------

PAIR_COLUMNS = ["pair_id", "lemma", "pos", "example_a", "example_b", "same_sense"]


def check_pairs(
    config: str, files: list[Path], gx: GXRunner, ledger: Ledger, index: ExampleIndex, batch_rows: int
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=POS_LETTERS)),
            ("value-sets", gxe.ExpectColumnValuesToNotBeNull(column="same_sense")),
            ("references", ex.ExpectReferencedExampleExists()),
            ("references", gxe.ExpectColumnValuesToBeInSet(column="examples_distinct", value_set=[True])),
            ("references", ex.ExpectReferencedExampleOfLemma()),
            ("references", ExpectPairExamplesHaveTargets()),
            ("same-sense", ExpectSameSenseAgreesWithLabels()),
        ]

    pool = _pool(gx, ledger, config, expectations, "pair_id", ["example_a", "example_b"])
    keys: dict[str, list] = {"pair_id": [], "example_a": [], "example_b": []}
    rows = 0
    for n_rows, c in column_batches(files, PAIR_COLUMNS, config, batch_rows):
        exists, of_lemma, targets, agree = [], [], [], []
        for lemma, pos, a, b, same in zip(
            c["lemma"], c["pos"], c["example_a"], c["example_b"], c["same_sense"], strict=True
        ):
            row_a, row_b = index.rows.get(a), index.rows.get(b)
            both = row_a is not None and row_b is not None
            exists.append(both)
            of_lemma.append(both and row_a[:2] == (lemma, pos) and row_b[:2] == (lemma, pos))
            targets.append(both and row_a[3] and row_b[3])
            labelled = both and row_a[2] is not None and row_b[2] is not None
            agree.append(not labelled or same == (row_a[2] == row_b[2]))
        frame = _frame(
            {
                "pos": c["pos"],
                "pair_id": c["pair_id"],
                "example_a": c["example_a"],
                "example_b": c["example_b"],
                "same_sense": c["same_sense"],
                "example_exists": exists,
                "examples_distinct": [a != b for a, b in zip(c["example_a"], c["example_b"], strict=True)],
                "example_of_lemma": of_lemma,
                "examples_have_targets": targets,
                "labels_agree": agree,
            }
        )

        def pair(i, c=c):
            a, b = c["example_a"][i], c["example_b"][i]
            row_a, row_b = index.rows.get(a), index.rows.get(b)
            return (
                f"lemma={c['lemma'][i]!r} pos={c['pos'][i]!r} example_a={a!r} {row_a[:4] if row_a else None} "
                f"example_b={b!r} {row_b[:4] if row_b else None} same_sense={c['same_sense'][i]}"
            )

        explain = dict.fromkeys(
            (
                "example_exists",
                "examples_distinct",
                "example_of_lemma",
                "examples_have_targets",
                "labels_agree",
            ),
            pair,
        )
        pool.add(frame, _describer(c["pair_id"], frame, explain))
        for name in keys:
            keys[name].extend(c[name])
        rows += n_rows
    if not pool.finish():
        _validate_keys(
            gx, ledger, config, keys, _key_suite(gx, config, "pair_id", ["example_a", "example_b"])
        )
    return rows


# ---- substitutions -------------------------------------------------------------------------------------

SUBSTITUTION_COLUMNS = [
    "substitution_id",
    "example_id",
    "lemma",
    "pos",
    "relation",
    "substitute",
    "score",
    "n_labels",
    "text",
    "target_start",
    "target_end",
]


def check_substitutions(
    config: str,
    files: list[Path],
    gx: GXRunner,
    ledger: Ledger,
    registry: TextRegistry,
    index: ExampleIndex,
    batch_rows: int,
) -> int:
    def expectations():
        return [
            ("value-sets", gxe.ExpectColumnValuesToBeInSet(column="pos", value_set=POS_LETTERS)),
            (
                "value-sets",
                gxe.ExpectColumnValuesToBeInSet(column="relation", value_set=list(SWORDS_RELATIONS)),
            ),
            ("value-sets", gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1)),
            ("value-sets", gxe.ExpectColumnValuesToBeBetween(column="n_labels", min_value=1)),
            ("value-sets", ExpectRelationMatchesScore()),
            ("references", ex.ExpectReferencedExampleExists()),
            ("references", ex.ExpectReferencedExampleOfLemma()),
            ("references", ExpectSubstitutedTextMatchesBase()),
            ("target-span", ex.ExpectTargetSpanInsideText()),
            ("target-span", ex.ExpectTargetSpanWordAligned()),
            ("target-span", ex.ExpectTargetFormOfLemma()),
        ]

    pool = _pool(gx, ledger, config, expectations, "substitution_id")
    all_ids: list[str] = []
    rows = 0
    for n_rows, c in column_batches(files, SUBSTITUTION_COLUMNS, config, batch_rows):
        inside, aligned, of_substitute, exists, of_lemma, matches, relation_ok = [], [], [], [], [], [], []
        for i, (text, start, end) in enumerate(
            zip(c["text"], c["target_start"], c["target_end"], strict=True)
        ):
            ok = 0 <= start < end <= len(text)
            inside.append(ok)
            aligned.append(ok and is_word_aligned(text, start, end))
            of_substitute.append(ok and is_form_of(text[start:end], c["substitute"][i]))
            base = index.rows.get(c["example_id"][i])
            exists.append(base is not None)
            of_lemma.append(base is not None and base[:2] == (c["lemma"][i], c["pos"][i]))
            matches.append(
                base is not None
                and base[3]
                and start == base[5]
                and text[:start] == base[4][:start]
                and text[end:] == base[4][base[6] :]
            )
            score = c["score"][i]
            relation_ok.append(score is not None and c["relation"][i] == relation_of(score))
        frame = _frame(
            {
                "substitution_id": c["substitution_id"],
                "pos": c["pos"],
                "relation": c["relation"],
                "score": np.asarray(c["score"], dtype=np.float64),
                "n_labels": np.asarray(c["n_labels"], dtype=np.int64),
                "relation_matches_score": relation_ok,
                "example_exists": exists,
                "example_of_lemma": of_lemma,
                "text_matches_base": matches,
                "span_inside": inside,
                "span_word_aligned": aligned,
                "form_of_lemma": of_substitute,
            }
        )

        def span(i, c=c):
            s, e = c["target_start"][i], c["target_end"][i]
            return f"text[{s}:{e}]={c['text'][i][max(s, 0) : max(e, 0)]!r}, substitute={c['substitute'][i]!r}"

        def base(i, c=c):
            row = index.rows.get(c["example_id"][i])
            held = f"{row[:2]} text={row[4]!r} target=({row[5]}, {row[6]})" if row else None
            return f"example_id={c['example_id'][i]!r} {held} lemma={c['lemma'][i]!r} text={c['text'][i]!r}"

        def relation(i, c=c):
            return f"relation={c['relation'][i]!r} score={c['score'][i]} (n_labels {c['n_labels'][i]})"

        explain = dict.fromkeys(("span_inside", "span_word_aligned", "form_of_lemma"), span)
        explain.update(dict.fromkeys(("example_exists", "example_of_lemma", "text_matches_base"), base))
        explain["relation_matches_score"] = relation
        pool.add(frame, _describer(c["substitution_id"], frame, explain))
        registry.add(config, c["substitution_id"], c["text"], c["target_start"], c["target_end"])
        all_ids.extend(c["substitution_id"])
        rows += n_rows
    if not pool.finish():
        suite = _key_suite(gx, config, "substitution_id")
        _validate_keys(gx, ledger, config, {"substitution_id": all_ids}, suite)
    return rows


# ---- texts ---------------------------------------------------------------------------------------------

TEXT_COLUMNS = ["text_id", "text"]


def check_texts(
    config: str, files: list[Path], gx: GXRunner, ledger: Ledger, registry: TextRegistry, batch_rows: int
) -> int:
    def expectations():
        return [("value-sets", gxe.ExpectColumnValuesToBeInSet(column="text_nonempty", value_set=[True]))]

    pool = _pool(gx, ledger, config, expectations, "text_id")
    all_ids: list[str] = []
    rows = 0
    for batch in iter_batches(files, TEXT_COLUMNS, batch_rows):
        require(batch, TEXT_COLUMNS, config)
        ids, texts = batch.column("text_id").to_pylist(), batch.column("text").to_pylist()
        frame = _frame({"text_id": ids, "text_nonempty": [bool(t and t.strip()) for t in texts]})
        pool.add(frame, _describer(ids, frame, {}))
        registry.add(config, ids, texts)
        all_ids.extend(ids)
        rows += batch.num_rows
    if not pool.finish():
        _validate_keys(gx, ledger, config, {"text_id": all_ids}, _key_suite(gx, config, "text_id"))
    return rows
