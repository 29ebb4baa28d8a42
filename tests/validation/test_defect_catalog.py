"""The defect catalog: every defect a routing atlas can have is caught, by the right check, and only by it.

Each case starts from a private copy of the clean SYNTHETIC atlas, injects one defect, rewrites the
Parquet file (recording the new file in the manifest unless the defect is about the manifest, so that
`manifest-files` does not mask the check under test), and asserts that exactly the expected
(config, check) pairs fail.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from validation_fixtures import N_EXPERTS, ROUTING, SCALE, TOP_K, AtlasEditor

from validation import run_validation

R = ROUTING
FIRST = "lemma00000.n|lemma00000.n.01|0"  # senses text "ctx0 ctx0 lemma00000 ctx0 end", target = token 2
SUBSTITUTION = "lemma00000.n|lemma00000.n.01|0|synonym"


# ---- helpers ------------------------------------------------------------------------------------------


def _routing_rows(ed: AtlasEditor, table: pa.Table, source_id: str = FIRST) -> np.ndarray:
    rows = ed.text_rows(table, source_id)
    assert len(rows) == 5, "the synthetic texts have five whitespace tokens"
    return rows


def _set_rows(ed: AtlasEditor, config: str, column: str, rows, values) -> None:
    """Set `column` at `rows` to `values` (one value or one per row) and rewrite the config."""
    table = ed.table(config)
    data = table.column(column).to_pylist()
    values = values if isinstance(values, list) else [values] * len(rows)
    for row, value in zip(rows, values, strict=True):
        data[int(row)] = value
    field = table.schema.field(column)
    ed.write(
        config, table.set_column(table.schema.get_field_index(column), field, pa.array(data, field.type))
    )


def _reshaped(ed: AtlasEditor, experts: np.ndarray, weights: np.ndarray) -> pa.Table:
    """The routing table with experts/weights of another [L][k] shape (a drifted file)."""
    from atlas_build.atlas.routing import nested_fixed_list

    table = ed.routing()
    for name, values, leaf in ((("experts", experts, pa.uint8())), ("weights", weights, pa.float16())):
        column = nested_fixed_list(values.astype(leaf.to_pandas_dtype()), leaf)
        field = pa.field(name, column.type, nullable=name == "weights")
        table = table.set_column(table.schema.get_field_index(name), field, column)
    return table.replace_schema_metadata(ed.routing().schema.metadata)


def _with_experts(ed: AtlasEditor, change) -> None:
    table = ed.routing()
    experts, weights = ed.arrays(table)
    change(experts, weights)
    ed.write(R, ed.with_arrays(table, experts=experts, weights=weights))


# ---- defects: routing ---------------------------------------------------------------------------------


def every_row_of_one_text_deleted(ed):
    """All routing rows of one text gone, the manifest recomputed: every row-level check still passes."""
    table = ed.routing()
    keep = np.ones(table.num_rows, dtype=bool)
    keep[_routing_rows(ed, table)] = False
    ed.write(R, table.filter(pa.array(keep)))


def dropped_last_token(ed):
    table = ed.routing()
    keep = np.ones(table.num_rows, dtype=bool)
    keep[_routing_rows(ed, table)[-1]] = False
    ed.write(R, table.filter(pa.array(keep)))


def dropped_text(ed):
    """Every row of one text gone: the model routed its corpus only in part (issue 27)."""
    table = ed.routing()
    keep = np.ones(table.num_rows, dtype=bool)
    keep[_routing_rows(ed, table)] = False
    ed.write(R, table.filter(pa.array(keep)))


def all_zero_expert_ids(ed):
    def change(experts, weights):
        experts[:, 1, :] = 0

    _with_experts(ed, change)


def duplicate_expert_in_top_k(ed):
    def change(experts, weights):
        experts[7, 2, 1] = experts[7, 2, 0]

    _with_experts(ed, change)


def expert_id_not_below_n(ed):
    def change(experts, weights):
        experts[9, 0, 3] = N_EXPERTS

    _with_experts(ed, change)


def top_k_width_wrong_in_file(ed):
    experts, weights = ed.arrays()
    kept = weights[:, :, : TOP_K - 1]
    kept = kept / kept.sum(axis=2, keepdims=True) * SCALE
    ed.write(R, _reshaped(ed, experts[:, :, : TOP_K - 1], kept))


def layer_count_wrong_in_file(ed):
    experts, weights = ed.arrays()
    ed.write(R, _reshaped(ed, experts[:, :-1], weights[:, :-1]))


def unsorted_weights(ed):
    def change(experts, weights):
        weights[11, 2, [0, 1]] = weights[11, 2, [1, 0]]
        experts[11, 2, [0, 1]] = experts[11, 2, [1, 0]]

    _with_experts(ed, change)


def negative_weight(ed):
    def change(experts, weights):
        weights[12, 1] = [1.5, 0.6, 0.5, -0.1]  # still sorted, still sums to the scale

    _with_experts(ed, change)


def nan_weight(ed):
    def change(experts, weights):
        weights[13, 0, 2] = np.nan

    _with_experts(ed, change)


def weights_not_summing_to_scale(ed):
    def change(experts, weights):
        weights[14] *= 0.8

    _with_experts(ed, change)


def all_zero_weights_layer(ed):
    def change(experts, weights):
        weights[:, 3, :] = 0

    _with_experts(ed, change)


def degenerate_layer(ed):
    def change(experts, weights):
        for token in range(len(experts)):
            ids = experts[token, 2]
            where = np.flatnonzero(ids == 7)
            if len(where):
                ids[[0, where[0]]] = ids[[where[0], 0]]
            else:
                ids[0] = 7

    _with_experts(ed, change)


def weights_null_with_weights_dtype(ed):
    table = ed.routing()
    weights = table.column("weights").combine_chunks()
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[5] = True
    nulled = pa.FixedSizeListArray.from_arrays(weights.values, weights.type.list_size, mask=pa.array(mask))
    ed.write(
        R, table.set_column(table.schema.get_field_index("weights"), table.schema.field("weights"), nulled)
    )


def duplicate_token_key(ed):
    table = ed.routing()
    row = int(_routing_rows(ed, table)[3])
    order = np.concatenate([np.arange(row + 1), [row], np.arange(row + 1, table.num_rows)])
    ed.write(R, table.take(pa.array(order)))


def gap_in_token_index(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "token_index", rows[3:], [4, 5])


def negative_token_index(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "token_index", rows, [-1, 0, 1, 2, 3])


def dangling_source_id(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "source_id", rows, "lemma00000.n|lemma00000.n.01|99")


def unknown_corpus(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "corpus", rows, "sense")


def char_offsets_outside_text(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "char_end", rows[-1:], 40)


def char_offsets_backwards(ed):
    table = ed.routing()
    rows = _routing_rows(ed, table)
    starts = table.column("char_start").to_pylist()
    ends = table.column("char_end").to_pylist()
    _set_rows(ed, R, "char_start", rows[:2], [starts[rows[1]], starts[rows[0]]])
    _set_rows(ed, R, "char_end", rows[:2], [ends[rows[1]], ends[rows[0]]])


def half_special_offsets(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "char_start", rows[:1], -1)


def example_without_target_token(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "is_target", rows, False)


def target_flag_on_other_token(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "is_target", rows[:1], True)


def segment_label_outside_traces(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "segment", rows[:1], "think")


def token_string_not_matching_id(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "token", rows[-1:], "End")


def token_id_outside_vocabulary(ed):
    rows = _routing_rows(ed, ed.routing())
    _set_rows(ed, R, "token_id", rows[-1:], 10**6)


def routing_schema_drift_int64(ed):
    table = ed.routing()
    index = table.schema.get_field_index("token_index")
    field = pa.field("token_index", pa.int64(), nullable=False)
    ed.write(R, table.set_column(index, field, pc.cast(table.column("token_index"), pa.int64())))


# ---- defects: corpora -----------------------------------------------------------------------------------


def senses_extra_column(ed):
    table = ed.table("senses")
    ed.write("senses", table.append_column("note", pa.array(["x"] * table.num_rows)))


def target_form_not_at_span(ed):
    _set_rows(ed, "senses", "target_form", [0], "lemma00001")


def target_span_on_another_word(ed):
    _set_rows(ed, "senses", "target_start", [0], 0)
    _set_rows(ed, "senses", "target_end", [0], 4)
    _set_rows(ed, "senses", "target_form", [0], "ctx0")


def duplicate_example_id(ed):
    ids = ed.table("senses").column("example_id").to_pylist()
    _set_rows(ed, "senses", "example_id", [1], ids[0])


def substitution_span_inside_word(ed):
    ids = ed.table("substitutions").column("substitution_id").to_pylist()
    row = ids.index(SUBSTITUTION)
    end = ed.table("substitutions").column("target_end").to_pylist()[row]
    _set_rows(ed, "substitutions", "target_end", [row], end - 1)


def substitution_base_missing(ed):
    _set_rows(ed, "substitutions", "example_id", [0], "nope")


def substitution_relation_wrong(ed):
    ids = ed.table("substitutions").column("substitution_id").to_pylist()
    _set_rows(ed, "substitutions", "relation", [ids.index(SUBSTITUTION)], "other-sense")


def pair_with_missing_example(ed):
    _set_rows(ed, "sense-pairs", "example_a", [0], "nope")


def pair_across_lemmas(ed):
    senses = ed.table("senses").to_pylist()
    other = next(r for r in senses if r["lemma"] == "lemma00001")
    pair = ed.table("sense-pairs").to_pylist()[0]
    _set_rows(ed, "sense-pairs", "example_b", [0], other["example_id"])
    _set_rows(ed, "sense-pairs", "synset_b", [0], other["synset"])
    _set_rows(ed, "sense-pairs", "same_sense", [0], pair["synset_a"] == other["synset"])


def same_sense_disagreeing(ed):
    same = ed.table("sense-pairs").column("same_sense").to_pylist()
    _set_rows(ed, "sense-pairs", "same_sense", [0], not same[0])


def duplicated_pair(ed):
    table = ed.table("sense-pairs")
    ed.write("sense-pairs", pa.concat_tables([table, table.slice(0, 1)]))


# ---- defects: models ------------------------------------------------------------------------------------


def models_top_k_inconsistent(ed):
    _set_rows(ed, "models", "top_k", [0], TOP_K - 1)


def models_layers_inconsistent(ed):
    _set_rows(ed, "models", "moe_layers", [0], [[1, 2, 3, 4, 5]])
    _set_rows(ed, "models", "num_hidden_layers", [0], 6)


def models_row_missing(ed):
    _set_rows(ed, "models", "model_slug", [0], "another-model")


def models_unknown_scoring(ed):
    _set_rows(ed, "models", "scoring_func", [0], "relu")


# ---- defects: files and manifest --------------------------------------------------------------------------


def manifest_sha_mismatch(ed):
    ed.edit_manifest(lambda m: m["files"]["senses/senses-00000.parquet"].update(sha256="0" * 64))


def manifest_row_count_mismatch(ed):
    ed.edit_manifest(lambda m: m["files"][f"{R}/{R}-00000.parquet"].update(rows=999))


def data_file_changed_after_manifest(ed):
    # Identical rows, different bytes (another row-group layout), manifest left as it was.
    ed.write(R, ed.routing(), update_manifest=False, row_group_size=100)


def data_file_missing(ed):
    ed.path("sense-pairs").unlink()


def unexpected_data_file(ed):
    (ed.root / "scratch").mkdir()
    shutil.copy(ed.path("senses"), ed.root / "scratch" / "scratch-00000.parquet")


CATALOG = [
    # routing: shape and experts
    (every_row_of_one_text_deleted, {f"{R}:text-coverage", f"{R}:corpus-coverage"}),
    (dropped_last_token, {f"{R}:token-coverage", f"{R}:tokenization", f"{R}:text-coverage"}),
    (all_zero_expert_ids, {f"{R}:experts-top-k", f"{R}:routing-not-degenerate"}),
    (duplicate_expert_in_top_k, {f"{R}:experts-top-k"}),
    (expert_id_not_below_n, {f"{R}:experts-in-range"}),
    (top_k_width_wrong_in_file, {f"{R}:schema", f"{R}:models-consistency", f"{R}:experts-top-k"}),
    (layer_count_wrong_in_file, {f"{R}:schema", f"{R}:models-consistency", f"{R}:experts-top-k"}),
    (degenerate_layer, {f"{R}:routing-not-degenerate"}),
    # routing: weights
    (unsorted_weights, {f"{R}:weights-sorted"}),
    (negative_weight, {f"{R}:weights-finite-nonnegative"}),
    (nan_weight, {f"{R}:weights-finite-nonnegative"}),
    (weights_not_summing_to_scale, {f"{R}:weights-sum"}),
    (all_zero_weights_layer, {f"{R}:weights-sum", f"{R}:routing-not-degenerate"}),
    (weights_null_with_weights_dtype, {f"{R}:weights-null"}),
    # routing: keys and references
    (duplicate_token_key, {f"{R}:token-keys-unique", f"{R}:tokenization", f"{R}:text-coverage"}),
    (gap_in_token_index, {f"{R}:token-index-contiguous"}),
    (negative_token_index, {f"{R}:token-index-contiguous"}),
    # The text whose rows were renamed is no longer routed: its corpus is routed in part.
    (dangling_source_id, {f"{R}:source-exists", f"{R}:text-coverage", f"{R}:corpus-coverage"}),
    (unknown_corpus, {f"{R}:source-exists", f"{R}:text-coverage", f"{R}:corpus-coverage"}),
    (dropped_text, {f"{R}:text-coverage", f"{R}:corpus-coverage"}),
    # routing: characters, targets, labels, tokens
    (char_offsets_outside_text, {f"{R}:char-offsets", f"{R}:tokenization"}),
    (char_offsets_backwards, {f"{R}:char-offsets", f"{R}:tokenization"}),
    (half_special_offsets, {f"{R}:char-offsets", f"{R}:tokenization"}),
    (example_without_target_token, {f"{R}:target-tokens"}),
    (target_flag_on_other_token, {f"{R}:target-tokens"}),
    (segment_label_outside_traces, {f"{R}:segment-labels"}),
    (token_string_not_matching_id, {f"{R}:token-strings", f"{R}:tokenization"}),
    (token_id_outside_vocabulary, {f"{R}:token-ids", f"{R}:token-strings", f"{R}:tokenization"}),
    (routing_schema_drift_int64, {f"{R}:schema"}),
    # corpora
    (senses_extra_column, {"senses:schema"}),
    (target_form_not_at_span, {"senses:target-span"}),
    (target_span_on_another_word, {"senses:target-span", f"{R}:target-tokens"}),
    (duplicate_example_id, {"senses:ids-unique", "sense-pairs:references", f"{R}:source-exists"}),
    (substitution_span_inside_word, {"substitutions:target-span"}),
    (substitution_base_missing, {"substitutions:references"}),
    (substitution_relation_wrong, {"substitutions:references"}),
    (pair_with_missing_example, {"sense-pairs:references"}),
    (pair_across_lemmas, {"sense-pairs:references"}),
    (same_sense_disagreeing, {"sense-pairs:same-sense"}),
    (duplicated_pair, {"sense-pairs:ids-unique"}),
    # models
    (models_top_k_inconsistent, {f"{R}:schema", f"{R}:models-consistency", f"{R}:experts-top-k"}),
    (models_layers_inconsistent, {f"{R}:schema", f"{R}:models-consistency", f"{R}:experts-top-k"}),
    (
        models_row_missing,
        {"models:models-consistency", f"{R}:models-consistency", "models:random-init-labels"},
    ),
    (models_unknown_scoring, {"models:models-fields"}),
    # files and manifest
    (manifest_sha_mismatch, {"senses:manifest-files"}),
    (manifest_row_count_mismatch, {f"{R}:manifest-files"}),
    (data_file_changed_after_manifest, {f"{R}:manifest-files", "atlas:card-current"}),
    (data_file_missing, {"sense-pairs:manifest-files", "atlas:configs"}),
    (unexpected_data_file, {"scratch:manifest-files", "atlas:configs"}),
]


def _failed(report) -> set[str]:
    return {f"{r.config}:{r.check}" for r in report.failures}


def test_clean_atlas_passes(clean_atlas_template):
    report = run_validation(clean_atlas_template)
    assert report.passed, report.render_table(only_problems=True)
    assert not report.failures
    statuses = {f"{r.config}:{r.check}": r.status for r in report.results}
    # Every check ran on the clean atlas (none skipped but the audit records: it was never audited): the
    # tokenizer fixture makes token-strings and tokenization run too.
    assert statuses.pop("atlas:audit-records") == "skipped"
    assert set(statuses.values()) == {"passed"}, statuses
    assert f"{R}:tokenization" in statuses and "atlas:card-current" in statuses
    assert f"{R}:token-strings" in statuses and "substitutions:references" in statuses


@pytest.mark.parametrize(("defect", "expected"), CATALOG, ids=[d.__name__ for d, _ in CATALOG])
def test_defect_is_caught_by_the_right_check(atlas_editor, defect, expected):
    defect(atlas_editor)
    report = run_validation(atlas_editor.root)
    assert not report.passed
    assert _failed(report) == expected, report.render_table(only_problems=True)
    for result in report.failures:
        if result.status == "failed":
            assert result.failing_examples, f"{result.config}:{result.check} failed without an example"


def test_catalog_is_broad():
    assert len(CATALOG) >= 20
    assert len({check for _, expected in CATALOG for check in expected}) >= 20


# Defects whose detection depends on rows of one text being seen together: with 3-row batches every
# text (5 tokens) straddles a batch boundary, so the carry-over and the segment merging are exercised.
STREAMING = [
    dropped_last_token,
    duplicate_token_key,
    gap_in_token_index,
    char_offsets_backwards,
    degenerate_layer,
]


@pytest.mark.parametrize("defect", STREAMING, ids=[d.__name__ for d in STREAMING])
def test_defect_is_caught_across_batch_boundaries(atlas_editor, defect):
    expected = dict((d.__name__, e) for d, e in CATALOG)[defect.__name__]
    defect(atlas_editor)
    report = run_validation(atlas_editor.root, batch_rows=3)
    assert _failed(report) == expected, report.render_table(only_problems=True)


@pytest.mark.parametrize("defect", [duplicate_example_id, duplicated_pair], ids=lambda d: d.__name__)
def test_duplicate_ids_are_caught_when_a_config_takes_several_gx_runs(atlas_editor, defect, monkeypatch):
    """Configs larger than one GX run check uniqueness on a separate whole-config key frame."""
    monkeypatch.setattr("validation.gxrun.POOL_ROWS", 100)
    expected = dict((d.__name__, e) for d, e in CATALOG)[defect.__name__]
    defect(atlas_editor)
    report = run_validation(atlas_editor.root)
    assert _failed(report) == expected, report.render_table(only_problems=True)
