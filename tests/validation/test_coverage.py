"""`text-coverage`: every text of every corpus a model routed has its routing rows, as many as its tokenizer
gives; which corpora a model routed is its build records' (issue 31: a deleted text was noticed by nothing).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from validation_fixtures import ROUTING, SYNTHETIC_SLUG

from validation import run_validation


def _result(report, config, check):
    return next(r for r in report.results if r.config == config and r.check == check)


def _routing_build(corpus: dict) -> dict:
    return {"kind": "routing", "model_slug": SYNTHETIC_SLUG, "model": "synthetic", "corpus": corpus}


def test_the_clean_atlas_covers_every_text(atlas_editor):
    report = run_validation(atlas_editor.root)
    result = _result(report, ROUTING, "text-coverage")
    assert result.status == "passed", report.render_table(only_problems=True)
    texts = atlas_editor.table("senses").num_rows + atlas_editor.table("substitutions").num_rows
    assert (
        result.details["expectations"]["texts routed whole"]["checked"] == texts
    )  # every text, none skipped


def test_a_text_without_rows_is_named(atlas_editor):
    table = atlas_editor.routing()
    victim = table["source_id"][0].as_py()
    keep = np.array(table["source_id"].to_pylist()) != victim
    atlas_editor.write(ROUTING, table.filter(pa.array(keep)))
    report = run_validation(atlas_editor.root)
    result = _result(report, ROUTING, "text-coverage")
    assert result.status == "failed" and result.details["expectations"]["texts routed whole"]["failing"] == 1
    assert result.failing_examples == [f"senses:{victim} has no routing rows in {ROUTING}"]


def test_a_corpus_the_build_record_names_must_be_routed(atlas_editor):
    """The build record says the model routed `--corpus text`, the atlas has no such corpus: failed."""
    atlas_editor.edit_manifest(
        lambda m: m["builds"].append(_routing_build({"corpus": "text", "input": "t.txt"}))
    )
    result = _result(run_validation(atlas_editor.root), ROUTING, "text-coverage")
    assert result.status == "failed"
    assert any("says it routed texts, the atlas holds none" in e for e in result.failing_examples)


def test_a_corpus_another_model_routed_is_not_asked_of_this_one(atlas_editor):
    """Per model: a build record of another model names corpora this model need not have routed."""
    other = {**_routing_build({"corpus": "text", "input": "t.txt"}), "model_slug": "another-model"}
    atlas_editor.edit_manifest(lambda m: m["builds"].append(other))
    result = _result(run_validation(atlas_editor.root), ROUTING, "text-coverage")
    assert result.status == "passed"
