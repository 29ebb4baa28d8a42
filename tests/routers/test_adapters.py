"""Adapter registry and RoutingSpec: what each adapter reports, and which decoder layers it calls MoE."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atlas_build.routers import ADAPTERS, RoutingSpec, UnsupportedModelError, adapter_for, decoder_config

from .conftest import CASES, make_config


def _spec(n, k, shared, scoring, method, norm, scale, layers, n_group=None, topk_group=None) -> RoutingSpec:
    return RoutingSpec(
        n_routed_experts=n,
        top_k=k,
        n_shared_experts=shared,
        scoring_func=scoring,
        topk_method=method,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
        moe_layers=layers,
        n_group=n_group,
        topk_group=topk_group,
    )


EXPECTED_SPECS = {
    "deepseek_v2_greedy": _spec(8, 2, 1, "softmax", "greedy", False, 2.0, (1, 2)),
    "deepseek_v2_group_limited": _spec(
        16, 3, 2, "softmax", "group_limited_greedy", False, 16.0, (1, 2), 4, 2
    ),
    "deepseek_v3": _spec(16, 4, 1, "sigmoid", "noaux_tc", True, 2.5, (1, 2), 4, 2),
    "mixtral": _spec(8, 2, 0, "softmax", "greedy", True, 1.0, (0, 1)),
    "qwen2_moe": _spec(8, 2, 1, "softmax", "greedy", False, 1.0, (1, 3)),
    "qwen3_moe": _spec(8, 3, 0, "softmax", "greedy", True, 1.0, (0, 2)),
    "olmoe": _spec(8, 2, 0, "softmax", "greedy", False, 1.0, (0, 1)),
    "glm4_moe": _spec(16, 4, 1, "sigmoid", "noaux_tc", True, 2.5, (1, 2), 4, 2),
    # softmax over the k chosen logits == softmax, top-k, renormalise
    "gpt_oss": _spec(8, 3, 0, "softmax", "greedy", True, 1.0, (0, 1)),
    "llama4_text": _spec(8, 2, 1, "sigmoid", "greedy", False, 1.0, (1, 3)),
    "llama4": _spec(8, 1, 1, "sigmoid", "greedy", False, 1.0, (1, 3)),
    "qwen3_5_moe": _spec(8, 2, 1, "softmax", "greedy", True, 1.0, (0, 1, 2, 3)),
    "qwen3_5_moe_text": _spec(8, 2, 1, "softmax", "greedy", True, 1.0, (0, 1)),
}

# (case, config overrides, MoE layers the model must have)
LAYER_RULES = [
    ("deepseek_v2_greedy", {"first_k_dense_replace": 0}, (0, 1, 2)),
    ("deepseek_v2_greedy", {"first_k_dense_replace": 2}, (2,)),
    ("deepseek_v3", {"first_k_dense_replace": 0}, (0, 1, 2)),
    ("deepseek_v3", {"first_k_dense_replace": 2}, (2,)),
    ("mixtral", {"num_hidden_layers": 3}, (0, 1, 2)),
    ("olmoe", {"num_hidden_layers": 3}, (0, 1, 2)),
    ("qwen2_moe", {"decoder_sparse_step": 1, "mlp_only_layers": [0, 3]}, (1, 2)),
    ("qwen2_moe", {"decoder_sparse_step": 3, "num_hidden_layers": 6}, (2, 5)),
    ("qwen2_moe", {"decoder_sparse_step": 2, "mlp_only_layers": [1]}, (3,)),
    ("qwen3_moe", {"decoder_sparse_step": 2, "mlp_only_layers": []}, (1,)),
    ("qwen3_moe", {"mlp_only_layers": [0, 1, 2], "num_hidden_layers": 4}, (3,)),
    ("glm4_moe", {"first_k_dense_replace": 0}, (0, 1, 2)),
    ("glm4_moe", {"first_k_dense_replace": 2}, (2,)),
    ("gpt_oss", {"num_hidden_layers": 3}, (0, 1, 2)),
    ("llama4_text", {"interleave_moe_layer_step": 1}, (0, 1, 2, 3)),  # Scout: every layer
    ("llama4_text", {"interleave_moe_layer_step": 3, "num_hidden_layers": 6}, (2, 5)),
    ("llama4_text", {"moe_layers": [0, 2]}, (0, 2)),  # an explicit list overrides the step
    ("llama4", {"interleave_moe_layer_step": 4}, (3,)),
    ("qwen3_5_moe", {"num_hidden_layers": 5}, (0, 1, 2, 3, 4)),
]


def test_every_architecture_is_registered():
    assert set(ADAPTERS.names()) >= {
        "deepseek_v2",
        "deepseek_v3",
        "glm4_moe",
        "gpt_oss",
        "llama4",
        "llama4_text",
        "mixtral",
        "qwen2_moe",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen3_moe",
        "olmoe",
    }
    for model_type in ADAPTERS.names():
        adapter = ADAPTERS.get(model_type)()
        assert adapter.name == model_type and model_type in adapter.model_types
        assert adapter.family and isinstance(adapter.verified, tuple)


def test_every_registered_architecture_has_a_verified_checkpoint():
    """`atlas model list` says each adapter is verified by tests/routers: each has a tiny checkpoint there,
    which test_gate_recompute or test_families routes and recomputes."""
    from .family_cases import FAMILY_CASES

    assert set(ADAPTERS.names()) <= {case.model_type for case in CASES.values()} | set(FAMILY_CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_routing_spec(name):
    config = make_config(CASES[name])
    adapter = adapter_for(config)
    assert adapter.name == CASES[name].model_type
    assert adapter.routing_spec(config) == EXPECTED_SPECS[name]


@pytest.mark.parametrize(("name", "overrides", "moe_layers"), LAYER_RULES)
def test_moe_layers_are_the_models_moe_layers(name, overrides, moe_layers):
    from transformers import AutoModelForCausalLM

    case = CASES[name]
    config = make_config(dataclasses.replace(case, config={**case.config, **overrides}))
    with torch.device("meta"):  # structure only: no weights are allocated
        model = AutoModelForCausalLM.from_config(config)  # a wrapper config builds its text decoder
    actual = tuple(
        i
        for i, layer in enumerate(model.model.layers)
        if type(getattr(layer, case.block_attr)).__name__ == case.moe_block
    )
    adapter = adapter_for(config)
    assert actual == moe_layers
    assert adapter.routing_spec(config).moe_layers == actual
    assert [i for i, _ in adapter.router_modules(model)] == list(actual)
    n_layers = decoder_config(config).num_hidden_layers
    assert all(adapter.is_moe_layer(config, i) == (i in actual) for i in range(n_layers))
    assert all(adapter.routed_expert_params(model, i) > 0 for i in actual)


def test_qwen3_reads_num_experts_as_released_configs_spell_it():
    from transformers import Qwen3MoeConfig

    # Qwen3's config.json says "num_experts"; transformers 5 stores it as num_local_experts.
    config = Qwen3MoeConfig.from_dict({**CASES["qwen3_moe"].config, "num_experts": 6})
    assert adapter_for(config).routing_spec(config).n_routed_experts == 6


def test_dense_model_is_refused_naming_the_supported_architectures():
    from transformers import LlamaConfig

    with pytest.raises(UnsupportedModelError, match="dense model") as error:
        adapter_for(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
    for model_type in ADAPTERS.names():
        assert model_type in str(error.value)


def test_unknown_moe_architecture_is_refused():
    from transformers import PretrainedConfig

    class MadeUpMoeConfig(PretrainedConfig):
        model_type = "made_up_moe"

    with pytest.raises(UnsupportedModelError, match="without a router adapter") as error:
        adapter_for(MadeUpMoeConfig(num_local_experts=8))
    assert "'made_up_moe'" in str(error.value) and "mixtral" in str(error.value)


def test_deepseek_v2_topk_method_transformers_lacks_is_refused():
    config = make_config(CASES["deepseek_v2_greedy"])
    config.topk_method = "noaux_tc"
    with pytest.raises(UnsupportedModelError, match="noaux_tc"):
        adapter_for(config).routing_spec(config)


def test_deepseek_v2_norm_topk_prob_is_reported_as_transformers_applies_it():
    config = make_config(CASES["deepseek_v2_greedy"])
    config.norm_topk_prob = True
    with pytest.warns(UserWarning, match="does not renormalise"):
        spec = adapter_for(config).routing_spec(config)
    assert spec.norm_topk_prob is False


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("deepseek_v2_greedy", {"first_k_dense_replace": 3}),
        ("qwen2_moe", {"mlp_only_layers": [1, 3]}),
        ("qwen3_moe", {"decoder_sparse_step": 4}),
        ("llama4_text", {"moe_layers": []}),
    ],
)
def test_config_without_moe_layers_is_refused(name, overrides):
    config = make_config(CASES[name])
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(UnsupportedModelError, match="no MoE layer"):
        adapter_for(config).routing_spec(config)


@pytest.mark.parametrize("name", ["glm4_moe", "deepseek_v3"])
def test_dense_only_deepseek_layout_is_refused_by_the_spec_check(name):
    """DeepSeek-V3's rule (GLM-4 MoE shares its adapter) gives an empty layer list for first_k_dense_replace >=
    num_hidden_layers; the engines' shared spec check refuses it before anything is written."""
    from atlas_build.engines.base import ModelLoadError
    from atlas_build.engines.checks import check_routing_spec

    config = make_config(CASES[name])
    config.first_k_dense_replace = config.num_hidden_layers
    spec = adapter_for(config).routing_spec(config)
    assert spec.moe_layers == ()
    with pytest.raises(ModelLoadError, match="no decoder layer is a Mixture-of-Experts layer"):
        check_routing_spec(spec, config.num_hidden_layers, "config.json")


def test_moe_settings_in_text_config_are_not_called_dense(monkeypatch):
    """A multimodal wrapper keeps its decoder's MoE keys in text_config; without an adapter it is refused as
    an MoE architecture, not as a dense model: by name with the reason (routers/catalog.py), and, for a
    family not named there, by the sub-config scan."""
    from transformers import AutoConfig

    from atlas_build.routers import catalog

    config = AutoConfig.for_model("glm4v_moe", text_config={"n_routed_experts": 8, "num_experts_per_tok": 2})
    assert not any(getattr(config, key, None) for key in ("n_routed_experts", "num_local_experts"))
    with pytest.raises(UnsupportedModelError, match="family the atlas refuses") as error:
        adapter_for(config)
    assert catalog.REFUSED["glm4v_moe"] in str(error.value)
    monkeypatch.delitem(catalog.REFUSED, "glm4v_moe")
    with pytest.raises(UnsupportedModelError, match="without a router adapter") as error:
        adapter_for(config)
    assert "config.text_config" in str(error.value) and "qwen3_5_moe" in str(error.value)


def test_dense_wrapper_is_still_dense():
    from transformers import AutoConfig

    with pytest.raises(UnsupportedModelError, match="dense model"):
        adapter_for(AutoConfig.for_model("qwen3_5"))  # Qwen3.5's dense multimodal wrapper


def test_wrapper_and_its_text_config_give_the_same_spec():
    for wrapper in ("llama4", "qwen3_5_moe"):
        config = make_config(CASES[wrapper])
        text = decoder_config(config)
        assert text is not config and text.model_type == f"{config.model_type}_text"
        assert adapter_for(config).routing_spec(config) == adapter_for(text).routing_spec(text)


def test_llama4_reads_experts_whose_sigmoid_underflows():
    """In bfloat16 sigmoid(-100) is 0: the chosen expert must come from the logits, not the non-zero scores."""
    from transformers.models.llama4.modeling_llama4 import Llama4Router

    config = make_config(CASES["llama4_text"])
    router = Llama4Router(config).to(torch.bfloat16)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, 0] = -torch.arange(100, 100 + config.num_local_experts, dtype=torch.bfloat16)
    hidden = torch.zeros(3, config.hidden_size, dtype=torch.bfloat16)
    hidden[:, 0] = 1.0  # logits -100, -101, ...: experts 0 and 1 are chosen
    with torch.no_grad():
        output = router(hidden)
    assert int(torch.count_nonzero(output[0])) == 0  # nothing left to read off the scores
    index, weights = adapter_for(config).read_router_output(output, router)
    assert index.tolist() == [[0, 1]] * 3
    assert weights.shape == (3, 2) and float(weights.abs().max()) == 0.0


def test_qwen3_5_config_keys_transformers_ignores_are_reported():
    """Qwen3-Next's norm_topk_prob / mlp_only_layers survive in a config.json, but Qwen3.5-MoE ignores them."""
    from transformers import Qwen3_5MoeConfig

    text = {**CASES["qwen3_5_moe"].config, "norm_topk_prob": False, "mlp_only_layers": [1]}
    config = Qwen3_5MoeConfig.from_dict({"text_config": text})
    with pytest.warns(UserWarning, match="ignores"):
        spec = adapter_for(config).routing_spec(config)
    assert spec.norm_topk_prob is True and spec.moe_layers == CASES["qwen3_5_moe"].moe_layers
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    assert all(type(layer.mlp).__name__ == "Qwen3_5MoeSparseMoeBlock" for layer in model.model.layers)
