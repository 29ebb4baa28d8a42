"""The runner around the checks: report and validation.json, `atlas validate` exit codes, `verify_files`,
streaming over shards and batches, ids-only engines, traces, the real built atlas, and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from validation_fixtures import N_EXPERTS, N_LAYERS, ROUTING, SCALE, TOP_K

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_table
from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA, TRACES, TRACES_SCHEMA, routing_schema
from atlas_build.atlas.store import write_config
from atlas_build.atlas.synthetic import random_routing, tokenize_whitespace
from dataset_cards.render import write_card
from dataset_cards.synthetic import write_synthetic_atlas
from validation import CHECKS, AtlasNotFoundError, run_validation, verify_files


def test_report_and_its_json_layout(clean_atlas_template, tmp_path):
    report = run_validation(clean_atlas_template)
    data = json.loads(report.write(tmp_path / "validation.json").read_text())
    assert data["format"] == "routing-atlas-validation" and data["passed"] is True
    assert data["summary"]["checks"] == len(report.results) and data["summary"]["failed"] == 0
    assert data["rows"][ROUTING] == sum(1 for _ in range(data["rows"][ROUTING]))
    assert data["tolerances"]["weights_sum_rtol_by_dtype"]["float16"] == 1e-2
    assert set(data["checks"]) <= set(CHECKS)
    result = next(r for r in data["results"] if r["config"] == ROUTING and r["check"] == "weights-sum")
    assert set(result) == {"config", "check", "status", "failing_examples", "details"}
    assert result["details"]["rtol"] == 1e-2 and result["details"]["scale"] == SCALE
    assert result["details"]["checked"] == data["rows"][ROUTING]
    table = report.render_table()
    assert "routing-synthetic-moe" in table and table.rstrip().splitlines()[-1].startswith("PASSED")


def test_atlas_validate_command(atlas_editor, tmp_path):
    from atlas_build.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(atlas_editor.root)])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output and "token-strings" in ok.output
    assert json.loads((atlas_editor.root / "validation.json").read_text())["passed"] is True

    atlas_editor.edit_manifest(lambda m: m["files"]["senses/senses-00000.parquet"].update(rows=1))
    broken = runner.invoke(main, ["validate", str(atlas_editor.root), "--problems-only"])
    assert broken.exit_code == 1, broken.output
    assert "manifest-files" in broken.output and "FAILED" in broken.output and "rows 120" in broken.output
    assert broken.output.index("atlas verify") < broken.output.index("manifest-files")  # verify runs first
    assert "token-strings" not in broken.output  # --problems-only hides what passed
    assert json.loads((atlas_editor.root / "validation.json").read_text())["passed"] is False

    missing = runner.invoke(main, ["validate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    not_atlas = runner.invoke(main, ["validate", str(tmp_path / "empty")])
    assert not_atlas.exit_code == 2 and "manifest.json" in not_atlas.output
    with pytest.raises(AtlasNotFoundError):
        run_validation(tmp_path / "empty")


def test_verify_files(atlas_editor):
    root = atlas_editor.root
    assert verify_files(root) == []
    atlas_editor.edit_manifest(lambda m: m["files"]["senses/senses-00000.parquet"].update(sha256="0" * 64))
    atlas_editor.edit_manifest(lambda m: m["files"][f"{ROUTING}/{ROUTING}-00000.parquet"].update(rows=3))
    atlas_editor.path("sense-pairs").unlink()
    (root / "senses" / "senses-00001.parquet").write_bytes(atlas_editor.path("models").read_bytes())
    kinds = {(p.path, p.kind) for p in verify_files(root)}
    assert kinds == {
        ("senses/senses-00000.parquet", "sha256"),
        (f"{ROUTING}/{ROUTING}-00000.parquet", "rows"),
        ("sense-pairs/sense-pairs-00000.parquet", "missing"),
        ("senses/senses-00001.parquet", "unexpected"),
    }
    assert all(p.message for p in verify_files(root, hashes=False))


def test_verify_files_compares_the_rows_with_their_fingerprints(atlas_editor):
    """A manifest whose rows fingerprint is not its file's is flagged: `atlas metrics` checks the rows it loads
    through datasets against that fingerprint, so it must be the file's own."""
    root, rel = atlas_editor.root, f"{ROUTING}/{ROUTING}-00000.parquet"
    assert verify_files(root) == []
    atlas_editor.edit_manifest(
        lambda m: m["files"][rel]["rows_fingerprint"]["columns"].update(experts="0" * 64)
    )
    [problem] = verify_files(root)
    assert (problem.path, problem.kind) == (rel, "rows-fingerprint") and "experts" in problem.message
    atlas_editor.edit_manifest(lambda m: m["files"][rel].pop("rows_fingerprint"))  # an older atlas
    assert verify_files(root) == []


def test_texts_straddling_shards_and_batches(atlas_editor):
    """Routing in 7-row shards read in 4-row batches: texts (5 tokens) cross both boundaries."""
    root = atlas_editor.root
    manifest = Manifest.load(root)
    table = atlas_editor.routing()
    write_config(root, manifest, ROUTING, table, table.schema, shard_rows=7)
    manifest.save(root)
    write_card(root)
    assert len(list((root / ROUTING).glob("*.parquet"))) > 100
    report = run_validation(root, batch_rows=4)
    assert report.passed, report.render_table(only_problems=True)
    assert report.rows[ROUTING] == table.num_rows


def test_ids_only_engine(tmp_path):
    """weights_dtype null: null weights pass, weight checks are skipped, a stray weight fails weights-null."""
    root = write_synthetic_atlas(tmp_path / "atlas", n_lemmas=12)
    manifest = Manifest.load(root)
    model = pa.Table.from_pylist([{**_models_row(root), "weights_dtype": None}], schema=MODELS_SCHEMA)
    write_config(root, manifest, MODELS, model, MODELS_SCHEMA)
    routing = _read(root, ROUTING)
    experts = np.asarray(routing.column("experts").to_pylist())
    schema = routing_schema(N_EXPERTS, N_LAYERS, TOP_K, None)
    write_config(root, manifest, ROUTING, _rebuild(routing, schema, experts, None), schema)
    manifest.save(root)
    write_card(root)
    report = run_validation(root, tokenizers=False)
    assert report.passed, report.render_table(only_problems=True)
    statuses = {r.check: r.status for r in report.results if r.config == ROUTING}
    assert statuses["weights-null"] == "passed"
    assert {statuses[c] for c in ("weights-sum", "weights-sorted", "weights-finite-nonnegative")} == {
        "skipped"
    }

    weights = np.full(experts.shape, 1.0 / TOP_K, dtype=np.float32)
    stray = _rebuild(routing, schema, experts, weights)
    write_config(root, manifest, ROUTING, stray, schema)
    manifest.save(root)
    write_card(root)
    assert {f"{r.config}:{r.check}" for r in run_validation(root, tokenizers=False).failures} == {
        f"{ROUTING}:weights-null"
    }


def test_traces_and_their_routing(atlas_editor):
    prompt, think, answer = "what is a bank", "a bank holds money", "a bank"
    text = f"User: {prompt} Assistant: <think> {think} </think> {answer}"
    spans = {
        name: (text.index(value), text.index(value) + len(value))
        for name, value in (("prompt", prompt), ("think", think))
    }
    spans["answer"] = (len(text) - len(answer), len(text))
    segments = [{"name": name, "start": start, "end": end} for name, (start, end) in spans.items()]
    trace = {
        "trace_id": "t1",
        "model_slug": "synthetic-moe",
        "text": text,
        "template": "plain",
        "segments": segments,
        "source": "synthetic",
        "meta": json.dumps({"task": "bank"}),
    }
    root = atlas_editor.root
    manifest = Manifest.load(root)
    write_config(root, manifest, TRACES, pa.Table.from_pylist([trace], schema=TRACES_SCHEMA), TRACES_SCHEMA)
    manifest.save(root)
    counts, tokens, char_spans = tokenize_whitespace([text])
    labels = []
    for start, end in char_spans.tolist():
        labels.append(next((s["name"] for s in segments if start < s["end"] and end > s["start"]), None))
    experts, weights = random_routing(
        np.random.default_rng(3), len(tokens), N_LAYERS, N_EXPERTS, TOP_K, SCALE
    )
    routing = atlas_editor.routing()
    rows = routing_table(
        routing.schema,
        source_ids=["t1"],
        corpus=[TRACES],
        token_counts=counts,
        token_ids=np.arange(len(tokens)),
        tokens=tokens,
        char_spans=char_spans,
        is_target=np.zeros(len(tokens), dtype=bool),
        experts=experts,
        weights=weights,
        segment=labels,
        marker=[None] * len(tokens),
    )
    atlas_editor.write(ROUTING, pa.concat_tables([routing, rows]))
    report = run_validation(root, tokenizers=False)
    assert report.passed, report.render_table(only_problems=True)
    assert report.get(TRACES, "segments").status == "passed"

    atlas_editor.update(
        TRACES, "segments", [segments[:2] + [{"name": "answer", "start": 0, "end": len(text) + 1}]]
    )
    failed = {f"{r.config}:{r.check}" for r in run_validation(root, tokenizers=False).failures}
    assert failed == {f"{TRACES}:segments"}


@pytest.mark.slow
def test_the_real_small_atlas_passes(small_atlas):
    """The atlas `atlas build` makes (WordNet corpora, tiny-deepseek-v3) passes the gate."""
    from atlas_build.models import load_tokenizer

    report = run_validation(small_atlas, tokenizer_loader=load_tokenizer)
    assert report.passed, report.render_table(only_problems=True)
    routing = [c for c in report.rows if c.startswith("routing-")]
    assert routing and all(report.rows[c] > 0 for c in routing)


def test_validation_imports_no_engine_code(clean_atlas_template):
    code = (
        "import sys; from pathlib import Path; from validation import run_validation; "
        f"assert run_validation(Path({str(clean_atlas_template)!r}), tokenizers=False).passed; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm', 'ray') "
        "or m.startswith(('atlas_build.engines', 'atlas_build.routers', 'atlas_build.models', "
        "'atlas_build.corpora', 'atlas_build.builder'))); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# ---- helpers ----------------------------------------------------------------------------------------------


def _read(root, config):
    import pyarrow.parquet as pq

    return pq.read_table(root / config)


def _models_row(root) -> dict:
    return _read(root, MODELS).to_pylist()[0]


def _rebuild(routing: pa.Table, schema: pa.Schema, experts: np.ndarray, weights) -> pa.Table:
    counts = np.unique(np.asarray(routing.column("source_id").to_pylist()), return_counts=True)
    order = list(dict.fromkeys(routing.column("source_id").to_pylist()))
    per_text = dict(zip(*counts, strict=True))
    return routing_table(
        schema,
        source_ids=order,
        corpus=["senses"] * len(order),
        token_counts=np.array([per_text[s] for s in order]),
        token_ids=routing.column("token_id").to_numpy(),
        tokens=routing.column("token").to_pylist(),
        char_spans=np.stack(
            [routing.column("char_start").to_numpy(), routing.column("char_end").to_numpy()], axis=1
        ),
        is_target=routing.column("is_target").to_numpy(),
        experts=experts,
        weights=weights,
    )
