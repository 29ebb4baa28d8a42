"""`atlas build --router-inputs`: the stored vectors, their validation, their audit, and readers.

All routing here comes from tiny-deepseek-v3, a RANDOM-INIT model: plumbing, not findings.
"""

from __future__ import annotations

import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import MODELS
from atlas_build.audit.reroute import audit_atlas
from atlas_build.audit.router_inputs import RouterInputAuditError
from atlas_build.builder import BuildConfig, run_build
from atlas_build.cli import main
from atlas_build.engines.hf import HFEngine
from validation.runner import run_validation

ROUTING = "routing-tiny-deepseek-v3"
LAYERS, DIM, SEED = (2, 4), 8, 3


@pytest.fixture(scope="module")
def vector_atlas(tmp_path_factory, requires_wordnet):
    out = tmp_path_factory.mktemp("router-inputs") / "atlas"
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3",
            out=out,
            max_lemmas=3,
            seed=SEED,
            router_inputs="2,4",
            router_input_dim=DIM,
            progress=False,
            texts_per_shard=32,
        ),
        log=lambda *_: None,
    )
    return out


def routing_table(root, columns=None):
    manifest = Manifest.load(root)
    return pa.concat_tables(
        pq.read_table(root / rel, columns=columns) for rel in manifest.config_files(ROUTING)
    )


def models_row(root):
    manifest = Manifest.load(root)
    return pq.read_table(root / manifest.config_files(MODELS)[0]).to_pylist()[0]


def test_vectors_are_the_projected_router_inputs(vector_atlas):
    row = models_row(vector_atlas)
    assert row["router_input_layers"] == list(LAYERS) and row["router_input_dim"] == DIM
    assert row["router_input_projection"] == "gaussian-jl-v1" and row["router_input_seed"] == SEED
    table = routing_table(vector_atlas).sort_by(
        [("corpus", "ascending"), ("source_id", "ascending"), ("token_index", "ascending")]
    )
    stored = routing_array(table.column("router_inputs"))
    assert stored.dtype == np.float16 and stored.shape == (table.num_rows, len(LAYERS), DIM)
    # Recomputed outside the build: the full vectors of one text, times the matrix drawn here from the seed.
    from atlas_build.atlas.store import read_config

    senses = read_config(vector_atlas, Manifest.load(vector_atlas), "senses").to_pylist()
    first = senses[0]
    engine = HFEngine("tiny-deepseek-v3", router_input_layers=LAYERS, router_input_dim=0)
    try:
        full = engine.route([first["text"]]).router_inputs.astype(np.float64)
    finally:
        engine.close()
    hidden = row["router_input_hidden_size"]
    matrix = np.random.RandomState(SEED).standard_normal((hidden, DIM)) / np.sqrt(DIM)
    mine = (np.array(table.column("source_id").to_pylist()) == first["example_id"]) & (
        np.array(table.column("corpus").to_pylist()) == "senses"
    )
    expected = full @ matrix
    np.testing.assert_allclose(
        stored[mine].astype(np.float64), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max()
    )


def test_validation_passes_and_catches_a_wrong_seed(vector_atlas, tmp_path):
    report = run_validation(vector_atlas, tokenizers=False)
    result = next(r for r in report.results if r.check == "router-inputs")
    assert result.status == "passed", result
    copy = tmp_path / "atlas"
    shutil.copytree(vector_atlas, copy)
    manifest = Manifest.load(copy)
    path = copy / manifest.config_files(MODELS)[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["router_input_seed"] += 1
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    report = run_validation(copy, tokenizers=False, hashes=False)
    result = next(r for r in report.results if r.check == "router-inputs")
    assert result.status == "failed" and "not reproducible" in " ".join(result.failing_examples)


def _record_in_manifest(root, rel):
    """Record a rewritten file in manifest.json as the build would have (hash, size, rows, fingerprint)."""
    import hashlib
    import json

    from atlas_build.atlas.rows import METHOD, file_fingerprints

    path = root / rel
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][rel].update(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        bytes=path.stat().st_size,
        rows=pq.read_metadata(path).num_rows,
        rows_fingerprint={"method": METHOD, "columns": file_fingerprints(path)},
    )
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_audit_compares_the_vectors(vector_atlas, tmp_path):
    lines: list[str] = []
    result = audit_atlas(vector_atlas, sample=10, record=False, log=lines.append)
    assert result.passed
    assert any(line.startswith("router inputs audited on") for line in lines)
    copy = tmp_path / "atlas"
    shutil.copytree(vector_atlas, copy)
    for rel in Manifest.load(copy).config_files(ROUTING):
        table = pq.read_table(copy / rel)
        values = routing_array(table.column("router_inputs")).copy()
        values[:, 1] *= 1.5  # the second layer's vectors scaled: still finite, no longer the model's
        from atlas_build.atlas.routing import nested_fixed_list

        column = nested_fixed_list(values, pa.float16())
        index = table.schema.get_field_index("router_inputs")
        pq.write_table(table.set_column(index, table.schema.field(index), column), copy / rel)
        _record_in_manifest(copy, rel)  # a consistent forgery: only re-routing can tell
    with pytest.raises(RouterInputAuditError, match="differ from the model's"):
        audit_atlas(copy, sample=10, record=False, log=lambda *_: None)


def test_load_dataset_streams_vectors_and_reads_routing_without_them(vector_atlas):
    streamed = next(iter(datasets.load_dataset(str(vector_atlas), ROUTING, split="train", streaming=True)))
    assert len(streamed["router_inputs"]) == len(LAYERS) and len(streamed["router_inputs"][0]) == DIM
    slim = datasets.load_dataset(str(vector_atlas), ROUTING, split="train", columns=["source_id", "experts"])
    assert slim.column_names == ["source_id", "experts"]
    assert len(slim) == routing_table(vector_atlas, ["source_id"]).num_rows


def test_the_default_build_stores_no_vectors(small_atlas):
    assert "router_inputs" not in routing_table(small_atlas).schema.names
    row = models_row(small_atlas)
    assert all(row[key] is None for key in row if key.startswith("router_input_"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--router-inputs", "0"], "not an MoE layer"),
        (["--router-inputs", "all", "--router-input-dim", "100000"], "hidden size"),
        (["--router-inputs", "all", "--router-input-dim", "-3"], "0 (the full vector) or positive"),
    ],
)
def test_bad_router_input_options(tmp_path, options, message, requires_wordnet):
    out = tmp_path / "atlas"
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            "tiny-deepseek-v3",
            "--out",
            str(out),
            "--max-lemmas",
            "2",
            "--no-progress",
            *options,
        ],
    )
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
