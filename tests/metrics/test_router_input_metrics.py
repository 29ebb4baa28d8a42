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
