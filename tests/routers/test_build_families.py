"""`atlas build` end to end on a tiny checkpoint of each newer MoE family (GLM-4 MoE, GPT-OSS, Llama 4,
Qwen3.5-MoE): the CLI builds an atlas that validates, whose `models` row and card describe the family, and
whose recorded routing is the independently recomputed gate (test_gate_recompute's float64 reference).

The checkpoints are random-init (built in conftest): these tests check the capture, not findings.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

from atlas_build.atlas.routing import routing_array
from atlas_build.cli import main

from .conftest import CASES
from .test_gate_recompute import MOE_BLOCKS, Reference, by_expert

# The families this file builds, and what their models row must say.
FAMILIES = {
    # name: (architecture, n_routed_experts, top_k, n_shared_experts, scoring_func, topk_method, norm)
    "glm4_moe": ("Glm4MoeForCausalLM", 16, 4, 1, "sigmoid", "noaux_tc", True),
    "gpt_oss": ("GptOssForCausalLM", 8, 3, 0, "softmax", "greedy", True),
    "llama4_text": ("Llama4ForCausalLM", 8, 2, 1, "sigmoid", "greedy", False),
    "llama4": ("Llama4ForConditionalGeneration", 8, 1, 1, "sigmoid", "greedy", False),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", 8, 2, 1, "softmax", "greedy", True),
}
# Weights are stored as float16: half an ulp near 1 is ~5e-4.
FLOAT16_TOLERANCE = 1e-3


def read(root, config):
    return datasets.load_dataset(str(root), config, split="train")


@pytest.fixture(scope="module")
def built(tiny_checkpoint, tmp_path_factory, requires_wordnet):
    """`built(name) -> atlas directory`, built once per module by `atlas build` on the tiny checkpoint."""
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"atlas-{name}") / "atlas"
            args = ["build", "--model", str(tiny_checkpoint(name)), "--out", str(out)]
            result = CliRunner().invoke(main, [*args, "--max-lemmas", "2", "--slug", name.replace("_", "-")])
            assert result.exit_code == 0, result.output
            cache[name] = out
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_build_validates_and_describes_the_family(name, built, tiny_checkpoint):
    out = built(name)
    architecture, n_experts, top_k, n_shared, scoring, method, norm = FAMILIES[name]
    case = CASES[name]
    (row,) = read(out, "models").to_list()
    assert row["model_type"] == case.model_type and row["router_adapter"] == name
    assert row["architecture"] == architecture
    assert row["moe_layers"] == list(case.moe_layers)
    assert row["num_hidden_layers"] == case.config["num_hidden_layers"]
    assert (row["n_routed_experts"], row["top_k"], row["n_shared_experts"]) == (n_experts, top_k, n_shared)
    assert (row["scoring_func"], row["topk_method"], row["norm_topk_prob"]) == (scoring, method, norm)
    assert 0 < row["active_params"] < row["total_params"]

    # A local checkpoint's tokenizer: given as its directory (the atlas names the model by a portable id).
    validate = ["validate", str(out), "--problems-only", "--tokenizer", str(tiny_checkpoint(name))]
    result = CliRunner().invoke(main, validate)
    assert result.exit_code == 0, result.output

    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"{architecture} ({case.model_type}), router adapter `{name}`" in card
    if name.startswith("llama4"):
        assert "multiplies the expert's input (not its output)" in card


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recorded_routing_is_the_recomputed_gate(name, built, tiny_checkpoint):
    out = built(name)
    slug = f"routing-{name.replace('_', '-')}"
    routing = read(out, slug).with_format("arrow")[:]
    experts = routing_array(routing.column("experts")).astype(np.int64)
    weights = routing_array(routing.column("weights")).astype(np.float64)
    token_ids = np.asarray(routing.column("token_id").to_pylist())
    source_ids = routing.column("source_id").to_pylist()
    texts = {}
    for config, key in (("senses", "example_id"), ("substitutions", "substitution_id")):
        for row in read(out, config).select_columns([key, "text"]).to_list():
            texts[row[key]] = row["text"]
    starts = [0] + [i for i in range(1, len(source_ids)) if source_ids[i] != source_ids[i - 1]]
    bounds = list(zip(starts, [*starts[1:], len(source_ids)], strict=True))
    assert len(bounds) == len(texts) > 0

    ref = Reference(tiny_checkpoint(name), *MOE_BLOCKS[name])
    mismatched, worst = 0, 0.0
    for a, b in bounds:
        ref_ids, ref_experts, ref_weights = ref.gate(texts[source_ids[a]])
        np.testing.assert_array_equal(token_ids[a:b], ref_ids)
        got_e, got_w = by_expert(experts[a:b], weights[a:b])
        want_e, want_w = by_expert(ref_experts, ref_weights)
        mismatched += int((got_e != want_e).any(axis=-1).sum())
        worst = max(worst, float(np.abs(got_w - want_w).max()))
    assert mismatched == 0, f"{name}: {mismatched} expert sets differ from the recomputed gate"
    assert worst <= FLOAT16_TOLERANCE, f"{name}: stored weights differ by up to {worst:.3g}"
    assert np.all(np.diff(weights, axis=-1) <= 0)  # highest weight first
