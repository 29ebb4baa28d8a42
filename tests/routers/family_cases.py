"""The families read through the router contract: a tiny config each, and a float64 recomputation of each
router written from its transformers 5 modeling code.

(Over 600 lines: one table of ~35 families, each a config and a recomputation; one file keeps "adding a family
is one entry plus its recomputation" literally true.)

Each is written from the family's modeling code (the router's forward, the MoE block's forward), not from the
adapter table (`atlas_build/routers/families.py`), which these functions never read.

A recomputation takes the router's input `x` `[T, hidden]` (float64), the router's own tensors (and its MoE
block's, for a bias the block passes in) as float64, the model config and the token ids, and returns
`(index [T, k], weights [T, k], selection scores [T, N])`. Keyword arguments switch one routing setting
(the negative controls): a recomputation with a setting changed must disagree with the model.

`removed` (expert ids) recomputes the router with those experts taken out (tests/routers/test_selection.py,
the ablation of `atlas intervene`): their logits are -inf (a softmax renormalises over the rest, a sigmoid
gives them 0) and their selection score is -inf before the group limit and the top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from .conftest import _COMMON, _MLA


# ---- recomputations, one rule each ----------------------------------------------------------------------
def _out(logits: torch.Tensor, removed) -> torch.Tensor:
    """The router's logits with the `removed` experts taken out of the router (-inf)."""
    if not len(removed):
        return logits
    return logits.index_fill(1, torch.as_tensor(list(removed), dtype=torch.long), float("-inf"))


def _off(choice: torch.Tensor, removed) -> torch.Tensor:
    """The selection score with the `removed` experts at -inf, before any group limit or top-k."""
    return _out(choice, removed)


def _keep_groups(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Mask to -inf every expert outside each token's topk_group best groups (group score: sum of its top-2)."""
    t, n = choice.shape
    group_scores = choice.view(t, n_group, n // n_group).topk(2, dim=-1).values.sum(-1)
    best = group_scores.topk(topk_group, dim=-1).indices
    keep = torch.zeros(t, n_group, dtype=torch.bool).scatter(1, best, True)
    return choice.masked_fill(~keep.repeat_interleave(n // n_group, dim=1), float("-inf"))


def noaux_tc(x, t, c, ids, grouped=True, norm=None, removed=()):
    """DeepseekV3TopkRouter and its copies (V3.2, GLM-5, dots1, EXAONE-MoE, Solar Open, Bailing): sigmoid;
    top-k of sigmoid + e_score_correction_bias in the topk_group best groups; weights normalised (+1e-20)
    when norm_topk_prob; times routed_scaling_factor."""
    s = torch.sigmoid(_out(x @ t["weight"].T, removed))
    choice = _off(s + t["e_score_correction_bias"], removed)
    masked = _keep_groups(choice, c.n_group, c.topk_group) if grouped else choice
    index = masked.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    if c.norm_topk_prob if norm is None else norm:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return index, w * c.routed_scaling_factor, choice


def softmax_topk(x, t, c, ids, norm=None, k_key="num_experts_per_tok", weight="weight", removed=()):
    """Qwen3-Next, FlexOlmo, Jamba, Hunyuan: softmax; top-k of it; renormalised when `norm`."""
    p = torch.softmax(_out(x @ t[weight].T, removed), dim=-1)
    index = _off(p, removed).topk(getattr(c, k_key), dim=-1).indices
    w = p.gather(1, index)
    if c.norm_topk_prob if norm is None else norm:
        w = w / w.sum(-1, keepdim=True)
    return index, w, p


def granite(x, t, c, ids, over_k=True, removed=()):
    """GraniteMoeTopKRouter: top-k of the logits; softmax over the k chosen logits."""
    logits = _out(x @ t["weight"].T, removed)
    top, index = logits.topk(c.num_experts_per_tok, dim=-1)
    w = torch.softmax(top, -1) if over_k else torch.softmax(logits, -1).gather(1, index)
    return index, w, logits


def minimax_m2(x, t, c, ids, use_bias=True, removed=()):
    """MiniMaxM2TopKRouter with the block's e_score_correction_bias: sigmoid; top-k of sigmoid + bias;
    weights renormalised."""
    s = torch.sigmoid(_out(x @ t["weight"].T, removed))
    choice = _off(s + (t["block.e_score_correction_bias"] if use_bias else 0.0), removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / w.sum(-1, keepdim=True), choice


def lfm2_moe(x, t, c, ids, norm=None, removed=()):
    """Lfm2MoeTopKRouter: sigmoid; top-k of sigmoid + the block's expert_bias (use_expert_bias); weights
    / (sum + 1e-6) when norm_topk_prob; times routed_scaling_factor."""
    s = torch.sigmoid(_out(x @ t["weight"].T, removed))
    choice = _off(s + t["block.expert_bias"] if c.use_expert_bias else s, removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    if c.norm_topk_prob if norm is None else norm:
        w = w / (w.sum(-1, keepdim=True) + 1e-6)
    return index, w * c.routed_scaling_factor, choice


def afmoe(x, t, c, ids, use_bias=True, removed=()):
    """AfmoeTokenChoiceRouter: sigmoid of gate(h); top-k of it + the block's expert_bias; normalised
    (+1e-20); times route_scale."""
    s = torch.sigmoid(_out(x @ t["gate.weight"].T, removed))
    choice = _off(s + (t["block.expert_bias"] if use_bias else 0.0), removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / (w.sum(-1, keepdim=True) + 1e-20) * c.route_scale, choice


def ernie(x, t, c, ids, use_bias=True, removed=()):
    """Ernie4_5_MoeTopKRouter: softmax (float32); top-k of softmax + moe_statics bias; the chosen softmax
    values / max(sum, moe_norm_min)."""
    p = torch.softmax(_out(x @ t["weight"].T, removed), dim=-1)
    choice = _off(p + (t["moe_statics.e_score_correction_bias"].reshape(-1) if use_bias else 0.0), removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = p.gather(1, index)
    return index, w / w.sum(-1, keepdim=True).clamp(min=c.moe_norm_min), choice


def longcat(x, t, c, ids, use_bias=True, removed=()):
    """LongcatFlashTopkRouter: softmax over routed + zero experts; top-k of it + bias; the chosen softmax
    values times routed_scaling_factor (not renormalised)."""
    p = torch.softmax(_out(x @ t["classifier.weight"].T, removed), dim=-1)
    choice = _off(p + (t["e_score_correction_bias"] if use_bias else 0.0), removed)
    index = choice.topk(c.moe_topk, dim=-1).indices
    return index, p.gather(1, index) * c.routed_scaling_factor, choice


def deepseek_v4(x, t, c, ids, use_hash=True, removed=()):
    """DeepseekV4TopKRouter / DeepseekV4HashRouter: s = sqrt(softplus(Wh)); learned: top-k of s + bias;
    hash: experts = tid2eid[token id]; weights s / (sum + 1e-20) times routed_scaling_factor."""
    s = torch.sqrt(F.softplus(_out(x @ t["weight"].T, removed)))
    if "tid2eid" in t and use_hash:
        index = t["tid2eid"].long()[torch.as_tensor(ids)]
        choice = torch.zeros_like(s).scatter(1, index, 1.0)
    else:
        choice = _off(s + t.get("e_score_correction_bias", 0.0), removed)
        index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / (w.sum(-1, keepdim=True) + 1e-20) * c.routed_scaling_factor, choice


def laguna(x, t, c, ids, softcap=True, removed=()):
    """LagunaTopKRouter: logits soft-capped (tanh(l / c) c, c = moe_router_logit_softcapping > 0); sigmoid; top-k
    of sigmoid + e_score_correction_bias; weights renormalised."""
    logits = x @ t["weight"].T
    cap = c.moe_router_logit_softcapping
    if softcap and cap > 0:
        logits = torch.tanh(logits / cap) * cap
    s = torch.sigmoid(_out(logits, removed))  # taken out after the soft-cap, which would bound -inf
    choice = _off(s + t["e_score_correction_bias"], removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / w.sum(-1, keepdim=True), choice


def hy_v3(x, t, c, ids, use_bias=True, removed=()):
    """HYV3TopKRouter with the block's e_score_correction_bias: sigmoid (float32); top-k of sigmoid + bias;
    weights / (sum + 1e-20) times router_scaling_factor."""
    s = torch.sigmoid(_out(x @ t["weight"].T, removed))
    choice = _off(s + (t["block.e_score_correction_bias"] if use_bias else 0.0), removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / (w.sum(-1, keepdim=True) + 1e-20) * c.router_scaling_factor, choice


def step3p7(x, t, c, ids, use_bias=True, removed=()):
    """Step3p7TopKRouter: sigmoid; top-k of sigmoid + e_score_correction_bias; weights renormalised (the
    block's moe_router_scaling_factor comes after the experts, outside the router)."""
    s = torch.sigmoid(_out(x @ t["weight"].T, removed))
    choice = _off(s + (t["e_score_correction_bias"] if use_bias else 0.0), removed)
    index = choice.topk(c.num_experts_per_tok, dim=-1).indices
    w = s.gather(1, index)
    return index, w / w.sum(-1, keepdim=True), choice


# ---- the tiny checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyCase:
    """One family's tiny checkpoint and its recomputation.

    Attributes:
        model_type: transformers `model_type` (also the adapter name).
        config: keyword arguments of the config class.
        routers: class names of its router modules (from the modeling code).
        recompute: the float64 recomputation.
        control: keyword arguments of `recompute` that change one routing setting (must be caught).
        block_tensors: tensors of the MoE block that owns the router, which the block passes to it.
        biases: router or block tensors re-drawn at random (a zero bias would test nothing).
        routing_kind: the models row's expected `routing_kind`.
        zero_experts: the last ids that are zero-computation experts.
        wrapper: a multimodal wrapper's other sub-configs; `config` is then its `text_config`.
    """

    model_type: str
    config: dict[str, Any]
    routers: tuple[str, ...]
    recompute: Any
    control: dict[str, Any]
    routing_kind: tuple[str, ...]
    block_tensors: tuple[str, ...] = ()
    biases: tuple[str, ...] = ()
    router_std: float = 0.5
    bias_std: float = 0.1
    zero_experts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    wrapper: dict[str, Any] | None = None  # the other sub-configs of a multimodal wrapper (vision_config)


_TINY = {**_COMMON, "head_dim": 8, "num_hidden_layers": 2}
_MOE = {"moe_intermediate_size": 16, "num_experts_per_tok": 2}
_NOAUX_CFG = {
    **_MOE,
    "n_group": 4,
    "topk_group": 2,
    "num_experts_per_tok": 3,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "n_shared_experts": 1,
}
_GROUPED = {"grouped": False}
_E_BIAS = ("e_score_correction_bias",)

CASE_LIST = [
    FamilyCase(
        "deepseek_v32",
        {
            **_TINY,
            **_MLA,
            **_NOAUX_CFG,
            "n_routed_experts": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "index_n_heads": 2,
            "index_head_dim": 16,
            "index_topk": 4,
        },
        ("DeepseekV32TopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "deepseek_v4",
        {
            **_TINY,
            "num_hidden_layers": 3,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "q_lora_rank": 16,
            "o_lora_rank": 16,
            "o_groups": 2,
            "index_n_heads": 2,
            "index_head_dim": 8,
            "index_topk": 4,
            "hc_mult": 2,
            "sliding_window": 8,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "mlp_layer_types": ["hash_moe", "moe", "moe"],
            "num_nextn_predict_layers": 0,
        },
        ("DeepseekV4TopKRouter", "DeepseekV4HashRouter"),
        deepseek_v4,
        {"use_hash": False},
        ("hash", "learned", "learned"),
        biases=_E_BIAS,
    ),
    FamilyCase(
        "glm_moe_dsa",
        {
            **_TINY,
            **_MLA,
            **_NOAUX_CFG,
            "n_routed_experts": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "index_n_heads": 2,
            "index_head_dim": 16,
            "index_topk": 4,
        },
        ("GlmMoeDsaTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "dots1",
        {**_TINY, **_NOAUX_CFG, "n_routed_experts": 16, "first_k_dense_replace": 0},
        ("Dots1TopkRouter",),
        noaux_tc,
        _GROUPED,
        ("learned", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "exaone_moe",
        {
            **_TINY,
            **_NOAUX_CFG,
            "num_experts": 16,
            "num_shared_experts": 1,
            "mlp_layer_types": ["dense", "sparse"],
        },
        ("ExaoneMoeTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "solar_open",
        {**_TINY, **_NOAUX_CFG, "n_routed_experts": 16},
        ("SolarOpenTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("learned", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "bailing_hybrid",
        {
            **_TINY,
            **_NOAUX_CFG,
            **_MLA,
            "num_experts": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["linear_attention", "full_attention"],
        },
        ("BailingHybridTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "minimax_m2",
        {**_TINY, **_MOE, "num_local_experts": 8},
        ("MiniMaxM2TopKRouter",),
        minimax_m2,
        {"use_bias": False},
        ("learned", "learned"),
        block_tensors=_E_BIAS,
        biases=("block.e_score_correction_bias",),
        bias_std=0.3,
    ),
    FamilyCase(
        "qwen3_next",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "norm_topk_prob": True,
            "shared_expert_intermediate_size": 16,
            "layer_types": ["linear_attention", "full_attention"],
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
        },
        ("Qwen3NextTopKRouter",),
        softmax_topk,
        {"norm": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "flex_olmo",
        {**_TINY, **_MOE, "num_experts": 8, "norm_topk_prob": False},
        ("FlexOlmoTopKRouter",),
        softmax_topk,
        {"norm": True},
        ("learned", "learned"),
    ),
    FamilyCase(
        "ernie4_5_moe",
        {
            **_TINY,
            **_MOE,
            "moe_num_experts": 8,
            "moe_num_shared_experts": 1,
            "moe_layer_start_index": 1,
            "moe_layer_interval": 1,
        },
        ("Ernie4_5_MoeTopKRouter",),
        ernie,
        {"use_bias": False},
        ("dense", "learned"),
        biases=("moe_statics.e_score_correction_bias",),
        bias_std=0.2,
    ),
    FamilyCase(
        "hunyuan_v1_moe",
        {**_TINY, "num_experts": 8, "moe_topk": 2, "use_qk_norm": True},
        ("HunYuanMoEV1Gate",),
        lambda x, t, c, ids, **kw: softmax_topk(x, t, c, ids, k_key="moe_topk", weight="wg.weight", **kw),
        {"norm": False},
        ("learned", "learned"),
        extra={"norm": True},
    ),
    FamilyCase(
        "granitemoe",
        {**_TINY, "num_local_experts": 8, "num_experts_per_tok": 3},
        ("GraniteMoeTopKRouter",),
        granite,
        {"over_k": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "granitemoeshared",
        {**_TINY, "num_local_experts": 8, "num_experts_per_tok": 3, "shared_intermediate_size": 16},
        ("GraniteMoeSharedTopKRouter",),
        granite,
        {"over_k": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "granitemoehybrid",
        {
            **_TINY,
            "num_local_experts": 8,
            "num_experts_per_tok": 3,
            "shared_intermediate_size": 16,
            "layers_block_type": ["mamba", "attention"],
            "mamba_n_heads": 4,
            "mamba_d_head": 16,
            "mamba_d_state": 8,
            "mamba_n_groups": 1,
            "mamba_chunk_size": 8,
        },
        ("GraniteMoeHybridTopKRouter",),
        granite,
        {"over_k": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "jamba",
        {
            **_TINY,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "mamba_d_state": 8,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 4,
            "use_mamba_kernels": False,
        },
        ("JambaTopKRouter",),
        lambda x, t, c, ids, norm=False, **kw: softmax_topk(x, t, c, ids, norm=norm, **kw),
        {"norm": True},
        ("dense", "learned"),
    ),
    FamilyCase(
        "lfm2_moe",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "num_dense_layers": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.5,
            "use_expert_bias": True,
            "layer_types": ["conv", "full_attention"],
        },
        ("Lfm2MoeTopKRouter",),
        lfm2_moe,
        {"norm": False},
        ("dense", "learned"),
        block_tensors=("expert_bias",),
        biases=("block.expert_bias",),
        bias_std=0.3,
    ),
    FamilyCase(
        "afmoe",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "num_dense_layers": 1,
            "route_scale": 2.0,
        },
        ("AfmoeTokenChoiceRouter",),
        afmoe,
        {"use_bias": False},
        ("dense", "learned"),
        block_tensors=("expert_bias",),
        biases=("block.expert_bias",),
        bias_std=0.3,
    ),
    FamilyCase(
        "longcat_flash",
        {
            **_TINY,
            **_MLA,
            "num_hidden_layers": 4,  # LongCat: 2 * num_layers (two attention sublayers per decoder layer)
            "n_routed_experts": 8,
            "zero_expert_num": 4,
            "moe_topk": 3,
            "expert_ffn_hidden_size": 16,
            "ffn_hidden_size": 32,
            "routed_scaling_factor": 2.0,
        },
        ("LongcatFlashTopkRouter",),
        longcat,
        {"use_bias": False},
        ("learned", "learned"),
        biases=_E_BIAS,
        bias_std=0.1,
        zero_experts=4,
    ),
]
CASE_LIST += [
    FamilyCase(
        "glm4_moe_lite",
        {**_TINY, **_MLA, **_NOAUX_CFG, "n_routed_experts": 16, "mlp_layer_types": ["dense", "sparse"]},
        ("Glm4MoeLiteTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "mimo_v2_flash",
        {
            **_TINY,
            **_NOAUX_CFG,
            "n_routed_experts": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["full_attention", "sliding_attention"],
            "sliding_window": 4,
        },
        ("MiMoV2FlashTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "kimi_linear",
        {
            **_TINY,
            **_MLA,
            **_NOAUX_CFG,
            "num_experts": 16,
            "num_shared_experts": 1,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["full_attention", "full_attention"],
        },
        ("KimiLinearTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
    ),
    FamilyCase(
        "granitemoe_swa",
        {**_TINY, "num_local_experts": 8, "num_experts_per_tok": 3, "sliding_window": 4},
        ("GraniteMoeSWATopKRouter",),
        granite,
        {"over_k": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "minimax",
        {**_TINY, **_MOE, "num_local_experts": 8, "layer_types": ["linear_attention", "full_attention"]},
        ("MiniMaxTopKRouter",),
        lambda x, t, c, ids, norm=True, **kw: softmax_topk(x, t, c, ids, norm=norm, **kw),
        {"norm": False},
        ("learned", "learned"),
    ),
    FamilyCase(
        "laguna",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "shared_expert_intermediate_size": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "moe_router_logit_softcapping": 1.0,
        },
        ("LagunaTopKRouter",),
        laguna,
        {"softcap": False},
        ("dense", "learned"),
        biases=_E_BIAS,
        bias_std=0.05,
    ),
]
CASE_LIST.append(
    FamilyCase(
        "hy_v3",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "router_scaling_factor": 2.5,
            "mlp_layer_types": ["dense", "sparse"],
        },
        ("HYV3TopKRouter",),
        hy_v3,
        {"use_bias": False},
        ("dense", "learned"),
        block_tensors=_E_BIAS,
        biases=("block.e_score_correction_bias",),
        bias_std=0.3,
    )
)
CASE_LIST.append(
    FamilyCase(
        "qwen3_vl_moe",
        {
            **_TINY,
            **_MOE,
            "num_experts": 8,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        },
        ("Qwen3VLMoeTextTopKRouter",),
        lambda x, t, c, ids, norm=True, **kw: softmax_topk(x, t, c, ids, norm=norm, **kw),
        {"norm": False},
        ("learned", "learned"),
        wrapper={
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "out_hidden_size": 32,
                "num_position_embeddings": 16,
                "patch_size": 4,
                "deepstack_visual_indexes": [],
            }
        },
    )
)
CASE_LIST.append(
    FamilyCase(
        "kimi_k25",
        {
            **_TINY,
            **_MLA,
            **_NOAUX_CFG,
            "model_type": "deepseek_v3",
            "n_routed_experts": 16,
            "first_k_dense_replace": 1,
            "num_nextn_predict_layers": 0,
        },
        ("DeepseekV3TopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
        wrapper={
            "vision_config": {
                "patch_size": 4,
                "pos_emb_height": 4,
                "pos_emb_width": 4,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
            },
            "projection_hidden_size": 16,
            "image_token_id": 60,
            "video_token_id": 61,
            "vision_start_token_id": 62,
            "vision_end_token_id": 63,
            "tie_word_embeddings": False,
        },
    )
)
CASE_LIST.append(
    FamilyCase(
        "step3p7",
        {
            **_TINY,
            **_MOE,
            "n_routed_experts": 8,
            "num_local_experts": 8,
            "moe_num_experts": 8,
            "share_expert_dim": 16,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["full_attention", "full_attention"],
            "sliding_window": 4,
            "moe_router_scaling_factor": 2.0,
        },
        ("Step3p7TopKRouter",),
        step3p7,
        {"use_bias": False},
        ("dense", "learned"),
        biases=_E_BIAS,
        bias_std=0.3,
        wrapper={
            "vision_config": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 16,
                "patch_size": 4,
                "max_position_embeddings": 16,
            }
        },
    )
)
CASE_LIST.append(
    FamilyCase(
        "glm5_next",
        {
            **_TINY,
            **_NOAUX_CFG,
            "num_key_value_heads": 4,
            "kv_lora_rank": 16,
            "q_lora_rank": 24,
            "qk_rope_head_dim": 0,  # its DSA attention layers are NoPE
            "v_head_dim": 8,
            "qk_nope_head_dim": 8,
            "n_routed_experts": 16,
            "index_topk": 4,
            "index_head_dim": 16,
            "index_n_heads": 2,
            "index_kpool": 2,
            "linear_head_dim": 8,
            "linear_num_heads": 4,
            "hc_mult": 2,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["full_attention", "full_attention"],
        },
        ("Glm5NextTextTopkRouter",),
        noaux_tc,
        _GROUPED,
        ("dense", "learned"),
        biases=_E_BIAS,
        router_std=0.15,
        wrapper={
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "num_heads": 2,
                "image_size": 16,
                "patch_size": 4,
                "out_hidden_size": 32,
                "intermediate_size": 32,
                "projection_intermediate_size": 32,
            },
            "image_token_id": 60,
            "video_token_id": 61,
            "image_start_token_id": 62,
            "image_end_token_id": 63,
            "video_start_token_id": 58,
            "video_end_token_id": 59,
        },
    )
)
CASE_LIST.append(
    FamilyCase(
        "aria_text",
        {
            **_TINY,
            "moe_num_experts": 8,
            "moe_topk": 3,
            "moe_num_shared_experts": 1,
            "moe_intermediate_size": 16,
        },
        ("AriaTextTopKRouter",),
        lambda x, t, c, ids, over_k=True, **kw: granite(
            x, t, SimpleNamespace(num_experts_per_tok=c.moe_topk), ids, over_k=over_k, **kw
        ),
        {"over_k": False},
        ("learned", "learned"),
    )
)
FAMILY_CASES = {case.model_type: case for case in CASE_LIST}
