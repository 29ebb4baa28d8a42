"""DeepSeek-R1's own config.json (its published values, written here) on the meta device: no weights.

Before anyone spends GPU hours on R1, the engine must read R1's shape right: 58 MoE layers (3..60) of 256
routed experts, top-8 with 8 groups / top-4 groups, sigmoid scores with the bias correction, scaling 2.5,
and the parameter counts of the published model (671.0 B without the multi-token-prediction layer, 37.6 B
active), here checked against a count written out from the architecture.
"""

from __future__ import annotations

import json
import shutil

import pytest

# deepseek-ai/DeepSeek-R1 config.json, as published (FP8 weights; the auto_map code is not run).
R1_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 129280,
}


def r1_parameter_counts(c: dict) -> tuple[int, int]:
    """(total, active) parameters of R1's decoder + embeddings + LM head, from the architecture by hand.

    MLA attention (q and kv low-rank projections with their norms), 3 dense SwiGLU layers, 58 MoE layers
    (256 routed + 1 shared SwiGLU expert and the router; the correction bias is a buffer), untied head.
    The multi-token-prediction layer is not part of the causal LM. Active: 8 of the 256 routed experts.
    """
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    attention = (
        h * c["q_lora_rank"]
        + c["q_lora_rank"]
        + c["q_lora_rank"] * heads * qk
        + h * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
        + c["kv_lora_rank"]
        + c["kv_lora_rank"] * heads * (c["qk_nope_head_dim"] + c["v_head_dim"])
        + heads * c["v_head_dim"] * h
    )
    dense, layers = c["first_k_dense_replace"], c["num_hidden_layers"]
    expert = 3 * h * c["moe_intermediate_size"]
    routed = c["n_routed_experts"] * expert
    moe = routed + c["n_shared_experts"] * expert + c["n_routed_experts"] * h
    total = (
        2 * c["vocab_size"] * h
        + h
        + layers * (attention + 2 * h)
        + dense * 3 * h * c["intermediate_size"]
        + (layers - dense) * moe
    )
    inactive = (
        (layers - dense)
        * routed
        * (c["n_routed_experts"] - c["num_experts_per_tok"])
        // c["n_routed_experts"]
    )
    return total, total - inactive


@pytest.fixture(scope="module")
def r1_engine(tmp_path_factory, tiny_checkpoint):
    from atlas_build.engines.hf import HFEngine

    ckpt = tmp_path_factory.mktemp("r1") / "DeepSeek-R1"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(R1_CONFIG, indent=2))
    # tiny-deepseek-v3's tokenizer is R1's vocabulary (with R1's BOS), so the engine can be built offline.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, ckpt / name)
    engine = HFEngine(str(ckpt), dtype="auto", load_weights=False)
    yield engine
    engine.close()


def test_r1_routing_spec(r1_engine):
    spec = r1_engine.spec
    assert spec.moe_layers == tuple(range(3, 61)) and len(spec.moe_layers) == 58
    assert (spec.n_routed_experts, spec.top_k, spec.n_shared_experts) == (256, 8, 1)
    assert (spec.n_group, spec.topk_group) == (8, 4)
    assert spec.scoring_func == "sigmoid" and spec.topk_method == "noaux_tc"
    assert spec.norm_topk_prob is True and spec.routed_scaling_factor == 2.5
    assert r1_engine.weightless and str(r1_engine.device) == "meta"
    assert len(r1_engine._routers) == 58


def test_r1_models_row(r1_engine):
    row = r1_engine.model_row()
    total, active = r1_parameter_counts(R1_CONFIG)
    assert row["total_params"] == total and round(total / 1e9, 1) == 671.0
    assert row["active_params"] == active and round(active / 1e9, 1) == 37.6
    expected = {
        "model_id": "DeepSeek-R1",  # a local folder: its name, never the build machine's path
        "revision": None,
        "architecture": "DeepseekV3ForCausalLM",
        "model_type": "deepseek_v3",
        "router_adapter": "deepseek_v3",
        "num_hidden_layers": 61,
        "moe_layers": list(range(3, 61)),
        "n_routed_experts": 256,
        "top_k": 8,
        "n_shared_experts": 1,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "n_group": 8,
        "topk_group": 4,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "dtype": "bfloat16",
        "engine": "hf",
        "tokenizer": "DeepSeek-R1",
        "add_bos_token": True,
        "random_init": False,
        "seed": None,
    }
    assert {key: row[key] for key in expected} == expected
    assert len(row["checkpoint_sha256"]) == 64
