"""The metrics of atlases with and without stored router inputs, end to end through `load_dataset`.

tiny-deepseek-v3 is RANDOM-INIT: these check what is computed, not what it finds.
"""

from __future__ import annotations

import pytest

from atlas_build.metrics.report.markdown import render_report

SLUG = "tiny-deepseek-v3"


@pytest.fixture(scope="module")
def vector_atlas(tmp_path_factory, requires_wordnet):
    from atlas_build.builder import BuildConfig, run_build

    out = tmp_path_factory.mktemp("vectors") / "atlas"
    config = BuildConfig(
        model="tiny-deepseek-v3",
        out=out,
        max_lemmas=40,
        router_inputs="all",
        router_input_dim=32,
        progress=False,
    )
    run_build(config, log=lambda *_: None)
    return out


def test_an_atlas_without_vectors_computes_every_other_metric(small_atlas, compute):
    entry = compute(small_atlas)["models"][SLUG]
    for block in ("sense_pairs", "probe", "substitutions", "predictability"):
        assert entry[block] is not None, block
    controls = entry["sense_pairs"]["controls"]
    assert "hidden_state" not in controls and "router-input" not in controls["all"]["method"]
    accuracy = entry["predictability"]["accuracy"]
    assert accuracy["router_input"] is None
    assert all(v is not None for v in accuracy["token"]["estimate"])
    assert accuracy["previous"]["estimate"][0] is None and accuracy["previous"]["estimate"][1] is not None


def test_an_atlas_with_vectors_gets_the_geometry_control(vector_atlas, compute):
    metrics = compute(vector_atlas, n_bootstrap=300)
    entry = metrics["models"][SLUG]
    controls = entry["sense_pairs"]["controls"]
    hidden = controls["hidden_state"]
    assert "error" not in hidden, hidden
    assert hidden["layers"] == entry["model"]["moe_layers"] and len(hidden["delta"]["estimate"]) == 5
    assert "router-input cosine" in controls["all"]["method"]
    assert "hidden_state" in entry["sense_pairs"]["survives"]["controls"]
    router = entry["predictability"]["accuracy"]["router_input"]
    chance = entry["predictability"]["chance"]
    assert all(low > chance for low in router["ci_low"])  # the router reads these vectors
    report = render_report(metrics)
    assert "geometry explains" in report and "Routing predictability" in report


def plant_geometry(source, out, sense_effect: bool, seed: int = 0):
    """A planted copy of `source`: every sense target's stored router inputs and experts rewritten.

    sense_effect False: the vectors are their sense's centre + noise, and the experts are the top-k of a fixed
    linear map of the vectors (routing made of geometry alone). True: the vectors are noise, the experts the
    top-k of the same map, replaced with probability 1/2 per example by its sense's own set (a sense effect
    the vectors do not carry). The copy's files no longer match its manifest: read with verify off."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from atlas_build.atlas.manifest import Manifest
    from atlas_build.atlas.routing import nested_fixed_list, routing_array
    from atlas_build.atlas.store import read_config

    shutil.copytree(source, out)
    manifest = Manifest.load(out)
    senses = read_config(out, manifest, "senses")
    synset = pc.dictionary_encode(senses.column("synset").combine_chunks()).indices.to_numpy()
    rng = np.random.default_rng(seed)
    for rel in manifest.config_files("routing-" + SLUG):
        table = pq.read_table(out / rel)
        experts = np.array(routing_array(table.column("experts")))
        vectors = np.array(routing_array(table.column("router_inputs")), dtype=np.float64)
        n_layers, dim = vectors.shape[1:]
        k, n_experts = experts.shape[2], 32
        mask = pc.and_(table.column("is_target"), pc.equal(table.column("corpus"), "senses"))
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        example = pc.index_in(
            table.column("source_id").take(pa.array(rows)), value_set=senses.column("example_id")
        )
        example = example.to_numpy(zero_copy_only=False).astype(np.int64)
        centres = rng.standard_normal((synset.max() + 1, n_layers, dim))
        noise = rng.standard_normal((len(senses), n_layers, dim))
        per_example = noise if sense_effect else centres[synset] + 0.8 * noise
        weights = rng.standard_normal((n_layers, dim, n_experts))
        vectors[rows] = per_example[example]
        chosen = np.argsort(-np.einsum("tld,lde->tle", vectors[rows], weights), axis=-1)[..., :k]
        if sense_effect:
            own = np.argsort(rng.random((synset.max() + 1, n_layers, n_experts)), axis=-1)[..., :k]
            take = (rng.random(len(senses)) < 0.5)[example]
            chosen[take] = own[synset[example[take]]]
        experts[rows] = chosen
        for name, values, kind in (("experts", experts, None), ("router_inputs", vectors, pa.float16())):
            index = table.schema.get_field_index(name)
            value_type = kind or table.schema.field(name).type.value_type.value_type
            array = values.astype(np.float16) if kind else values.astype(value_type.to_pandas_dtype())
            table = table.set_column(index, table.schema.field(name), nested_fixed_list(array, value_type))
        pq.write_table(table, out / rel, compression="zstd")
    return out


def test_planted_geometry_is_explained_and_a_planted_sense_effect_survives(vector_atlas, compute, tmp_path):
    geometry = compute(
        plant_geometry(vector_atlas, tmp_path / "geometry", False), n_bootstrap=400, verify=False
    )
    hidden = geometry["models"][SLUG]["sense_pairs"]["controls"]["hidden_state"]
    assert hidden["raw"]["layer_mean"]["delta"]["ci_low"] > 0  # same-sense targets were planted closer
    mean = hidden["layer_mean"]["delta"]
    assert mean["ci_low"] <= 0 <= mean["ci_high"]
    assert hidden["explained"]["ci_low"] <= 1 <= hidden["explained"]["ci_high"]
    sense = compute(plant_geometry(vector_atlas, tmp_path / "sense", True), n_bootstrap=400, verify=False)
    hidden = sense["models"][SLUG]["sense_pairs"]["controls"]["hidden_state"]
    assert hidden["layer_mean"]["delta"]["ci_low"] > 0
    assert hidden["explained"]["ci_low"] <= 0 <= hidden["explained"]["ci_high"]
