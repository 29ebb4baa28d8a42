"""The MoE families read through the router contract (`routers/contract.py`): one `Family` row each.

Every row is written from the family's transformers 5 modeling code (its router's forward, its MoE
block's forward and its decoder layer's `__init__`); `rule` is that router in one line. tests/routers/
test_families.py recomputes each router in float64 from the modeling code, independently of this table.
Adding a family is one row here and one recomputation there.
"""

from __future__ import annotations

from atlas_build.routers.contract import Family, adapter_class

_NOAUX = {  # DeepSeek-V3's rule, as its descendants copy it
    "experts": "n_routed_experts",
    "scoring": "sigmoid",
    "method": "noaux_tc",
    "selection": "sigmoid",
    "bias": "router.e_score_correction_bias",
    "norm": "norm_topk_prob",
    "scale": "routed_scaling_factor",
    "groups": True,
    "shared": "n_shared_experts",
}
_NOAUX_RULE = (
    "s = sigmoid(Wh); top-k of s + bias within the topk_group best of n_group groups (group score: sum of "
    "its top-2); w = s / sum_k s if norm_topk_prob; times routed_scaling_factor"
)
_BUILT = "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed"
_CONTRACT = "routing and --scores equal a float64 recomputation written from the modeling code"

ROWS = [
    Family(
        "deepseek_v3",
        ("DeepseekV3TopkRouter",),
        "DeepSeek-V3, DeepSeek-R1 (and the built-in tiny-deepseek-v3, RANDOM-INIT)",
        _NOAUX_RULE,
        layers="first_k_dense",
        score_kind=(
            "sigmoid(router logits) + e_score_correction_bias: the bias-corrected score DeepSeek-V3/R1 "
            "chooses on, before the group mask (the gate weights use the sigmoid without the bias)"
        ),
        verified=(
            "the correction bias and the group limit change some choices",
            "atlas build on the built-in tiny-deepseek-v3, the atlas routing recomputed (tests/spine)",
        ),
        **_NOAUX,
    ),
    Family(
        "glm4_moe",
        ("Glm4MoeTopkRouter",),
        "GLM-4.5, GLM-4.5-Air, GLM-4.6 (zai-org)",
        _NOAUX_RULE,
        layers="first_k_dense",
        score_kind=(
            "sigmoid(router logits) + e_score_correction_bias: the bias-corrected score GLM-4 MoE chooses on, "
            "before the group mask (the gate weights use the sigmoid without the bias)"
        ),
        verified=("the correction bias and the group limit change some choices", _BUILT),
        **_NOAUX,
    ),
    Family(
        "mixtral",
        ("MixtralTopKRouter",),
        "Mixtral-8x7B, Mixtral-8x22B",
        "p = softmax(Wh); top-k of p; w = p / sum_k p (always)",
        experts="num_local_experts",
        score_kind="softmax probability over all routed experts (what top-k selects on)",
    ),
    Family(
        "olmoe",
        ("OlmoeTopKRouter",),
        "OLMoE-1B-7B (AllenAI)",
        "p = softmax(Wh); top-k of p; w = p / sum_k p if norm_topk_prob",
        norm="norm_topk_prob",
        score_kind="softmax probability over all routed experts (what top-k selects on)",
    ),
    Family(
        "qwen3_moe",
        ("Qwen3MoeTopKRouter",),
        "Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder MoE",
        "p = softmax(Wh); top-k of p; w = p / sum_k p if norm_topk_prob; dense layers from mlp_only_layers",
        norm="norm_topk_prob",
        layers="qwen_step",
        score_kind="softmax probability over all routed experts (what top-k selects on)",
        verified=("dense layers from mlp_only_layers",),
    ),
    Family(
        "qwen2_moe",
        ("Qwen2MoeTopKRouter",),
        "Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B",
        "p = softmax(Wh); top-k of p; w = p / sum_k p if norm_topk_prob; one sigmoid-gated shared expert",
        norm="norm_topk_prob",
        layers="qwen_step",
        shared_if="shared_expert_intermediate_size",
        score_kind="softmax probability over all routed experts (what top-k selects on)",
        verified=("interleaved dense/MoE layers",),
    ),
    Family(
        "gpt_oss",
        ("GptOssTopKRouter",),
        "gpt-oss-20b, gpt-oss-120b (OpenAI)",
        "l = Wh + b; top-k of l; w = softmax over the k chosen logits",
        experts="num_local_experts",
        selection="logits",
        router_path="mlp.router",
        score_kind=(
            "router logits W h + b, bias included: what GPT-OSS takes its top-k of (its softmax is over the k "
            "chosen logits only, after the choice)"
        ),
        verified=("the router bias changes some choices", "sliding-window layers", _BUILT),
    ),
    # ---- families added with the contract -------------------------------------------------------------
    Family(
        "deepseek_v32",
        ("DeepseekV32TopkRouter",),
        "DeepSeek-V3.2, DeepSeek-V3.2-Exp",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "deepseek_v4",
        ("DeepseekV4TopKRouter", "DeepseekV4HashRouter"),
        "DeepSeek-V4",
        "s = scoring_func(Wh) (sqrt-softplus); learned layers: top-k of s + bias; hash layers: experts = "
        "tid2eid[token id]; w = s / sum_k s times routed_scaling_factor",
        experts="n_routed_experts",
        scoring="scoring_func",
        method="noaux_tc",
        selection="scoring_func",
        bias="router.e_score_correction_bias",
        norm=True,
        scale="routed_scaling_factor",
        shared="n_shared_experts",
        layers="mlp_layer_types",
        moe_layer_types=("moe", "sparse"),
        hash_layer_types=("hash_moe",),
        verified=(
            _CONTRACT,
            "hash layers recorded as routing_kind hash, their experts the token's table row",
        ),
    ),
    Family(
        "glm_moe_dsa",
        ("GlmMoeDsaTopkRouter",),
        "GLM-5 (zai-org; DeepSeek sparse attention)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        route_alone=(
            "transformers 5's GLM-5 sparse-attention indexer lets right padding change real tokens' hidden "
            "states (tests/routers/test_families: a padded batch moved weights by 0.03)"
        ),
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "dots1",
        ("Dots1TopkRouter",),
        "dots.llm1 (rednote-hilab)",
        _NOAUX_RULE,
        layers="first_k_dense",
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "exaone_moe",
        ("ExaoneMoeTopkRouter",),
        "EXAONE MoE (LG AI Research)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **{**_NOAUX, "experts": "num_experts", "shared": "num_shared_experts"},
    ),
    Family(
        "solar_open",
        ("SolarOpenTopkRouter",),
        "Solar Open (Upstage)",
        _NOAUX_RULE,
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "bailing_hybrid",
        ("BailingHybridTopkRouter",),
        "Ling / Ring hybrid-attention MoE (inclusionAI Bailing)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **{**_NOAUX, "experts": "num_experts"},
    ),
    Family(
        "minimax_m2",
        ("MiniMaxM2TopKRouter",),
        "MiniMax-M2, MiniMax-M2.1",
        "s = sigmoid(Wh); top-k of s + block bias; w = s / sum_k s",
        experts="num_local_experts",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="block.e_score_correction_bias",
        verified=(_CONTRACT,),
    ),
    Family(
        "qwen3_next",
        ("Qwen3NextTopKRouter",),
        "Qwen3-Next-80B-A3B",
        "p = softmax(Wh); top-k of p; w = p / sum_k p if norm_topk_prob; one sigmoid-gated shared expert",
        norm="norm_topk_prob",
        layers="qwen_step",
        shared_if="shared_expert_intermediate_size",
        verified=(_CONTRACT,),
    ),
    Family(
        "flex_olmo",
        ("FlexOlmoTopKRouter",),
        "FlexOlmo (AllenAI)",
        "p = softmax(Wh); top-k of p; w = p / sum_k p if norm_topk_prob",
        norm="norm_topk_prob",
        verified=(_CONTRACT,),
    ),
    Family(
        "ernie4_5_moe",
        ("Ernie4_5_MoeTopKRouter",),
        "ERNIE-4.5-21B-A3B, ERNIE-4.5-300B-A47B (Baidu)",
        "p = softmax(Wh) (float32); top-k of p + moe_statics bias; w = p / max(sum_k p, moe_norm_min)",
        method="noaux_tc",
        bias="router.moe_statics.e_score_correction_bias",
        shared="moe_num_shared_experts",
        layers="ernie_interval",
        verified=(_CONTRACT,),
    ),
    Family(
        "hunyuan_v1_moe",
        ("HunYuanMoEV1Gate",),
        "Hunyuan-A13B (Tencent)",
        "p = softmax(W_g h); top-k of p (k = moe_topk); w = p / sum_k p; one ungated shared MLP",
        top_k="moe_topk",
        shared=1,
        verified=(_CONTRACT,),
    ),
    Family(
        "granitemoe",
        ("GraniteMoeTopKRouter",),
        "Granite 3.0 / 3.1 MoE (IBM)",
        "l = Wh; top-k of l; w = softmax over the k chosen logits",
        experts="num_local_experts",
        selection="logits",
        router_path="block_sparse_moe.router",
        experts_path="block_sparse_moe.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "granitemoeshared",
        ("GraniteMoeSharedTopKRouter",),
        "Granite MoE with a shared expert (IBM)",
        "l = Wh; top-k of l; w = softmax over the k chosen logits; one shared MLP when shared_intermediate_size",
        experts="num_local_experts",
        selection="logits",
        shared_if="shared_intermediate_size",
        router_path="block_sparse_moe.router",
        experts_path="block_sparse_moe.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "granitemoehybrid",
        ("GraniteMoeHybridTopKRouter",),
        "Granite 4.0 hybrid Mamba/attention MoE (IBM)",
        "l = Wh; top-k of l; w = softmax over the k chosen logits; one shared MLP on every layer",
        experts="num_local_experts",
        selection="logits",
        shared=1,
        router_path="block_sparse_moe.router",
        experts_path="block_sparse_moe.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "jamba",
        ("JambaTopKRouter",),
        "Jamba, Jamba-1.5 (AI21; Mamba/attention hybrid)",
        "p = softmax(Wh); top-k of p; w = p (not renormalised); MoE layers where layers_num_experts > 1",
        norm=False,
        layers="jamba",
        router_path="feed_forward.router",
        experts_path="feed_forward.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "lfm2_moe",
        ("Lfm2MoeTopKRouter",),
        "LFM2-8B-A1B (Liquid AI)",
        "s = sigmoid(Wh); top-k of s + expert_bias (if use_expert_bias); w = s / (sum_k s + 1e-6) if "
        "norm_topk_prob; times routed_scaling_factor",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="block.expert_bias",
        norm="norm_topk_prob",
        scale="routed_scaling_factor",
        layers="num_dense_layers",
        router_path="feed_forward.gate",
        experts_path="feed_forward.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "afmoe",
        ("AfmoeTokenChoiceRouter",),
        "Trinity (Arcee AFMoE)",
        "s = sigmoid(Wh); top-k of s + expert_bias; w = s / sum_k s times route_scale; shared experts",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="block.expert_bias",
        scale="route_scale",
        shared="num_shared_experts",
        layers="num_dense_layers",
        router_path="mlp.router",
        verified=(_CONTRACT,),
    ),
    Family(
        "longcat_flash",
        ("LongcatFlashTopkRouter",),
        "LongCat-Flash-Chat (Meituan)",
        "p = softmax(Wh) over routed + zero-computation experts; top-k of p + bias; w = p times "
        "routed_scaling_factor (not renormalised); ids >= n_routed_experts are zero experts",
        experts="n_routed_experts",
        zero_experts="zero_expert_num",
        top_k="moe_topk",
        method="noaux_tc",
        bias="router.e_score_correction_bias",
        norm=False,
        scale="routed_scaling_factor",
        layer_count="num_layers",
        router_path="mlp.router",
        card_note=(
            "LongCat-Flash: every decoder layer also runs two dense MLPs beside the MoE block (shortcut-"
            "connected MoE); they are not experts and not recorded."
        ),
        verified=(_CONTRACT, "zero-computation experts take the last ids and are chosen"),
    ),
]

ROWS += [
    Family(
        "glm4_moe_lite",
        ("Glm4MoeLiteTopkRouter",),
        "GLM-4.7-Flash (zai-org)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "mimo_v2_flash",
        ("MiMoV2FlashTopkRouter",),
        "MiMo-V2-Flash (Xiaomi)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **_NOAUX,
    ),
    Family(
        "kimi_linear",
        ("KimiLinearTopkRouter",),
        "Kimi-Linear-48B-A3B (Moonshot AI)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
        **{**_NOAUX, "experts": "num_experts", "shared": "num_shared_experts"},
    ),
    Family(
        "granitemoe_swa",
        ("GraniteMoeSWATopKRouter",),
        "Granite MoE with sliding-window attention (IBM)",
        "l = Wh; top-k of l; w = softmax over the k chosen logits; one shared MLP when shared_intermediate_size",
        experts="num_local_experts",
        selection="logits",
        shared_if="shared_intermediate_size",
        router_path="block_sparse_moe.router",
        experts_path="block_sparse_moe.experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "minimax",
        ("MiniMaxTopKRouter",),
        "MiniMax-Text-01 (lightning-attention hybrid)",
        "p = softmax(Wh) (float32); top-k of p; w = p / sum_k p (always)",
        experts="num_local_experts",
        verified=(_CONTRACT,),
    ),
    Family(
        "laguna",
        ("LagunaTopKRouter",),
        "Laguna (Poolside)",
        "l = Wh, soft-capped (tanh(l / c) c when moe_router_logit_softcapping c > 0); s = sigmoid(l); top-k of s + "
        "bias; w = s / sum_k s; one shared expert",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="router.e_score_correction_bias",
        shared_if="shared_expert_intermediate_size",
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
    ),
]
ROWS.append(
    Family(
        "hy_v3",
        ("HYV3TopKRouter",),
        "Hunyuan v3 MoE (Tencent)",
        "s = sigmoid(Wh) (float32); top-k of s + block bias; w = s / (sum_k s + 1e-20) times "
        "router_scaling_factor; shared experts",
        experts="num_local_experts",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="block.e_score_correction_bias",
        scale="router_scaling_factor",
        shared="num_shared_experts",
        layers="mlp_layer_types",
        verified=(_CONTRACT,),
    )
)
ROWS.append(
    Family(
        "qwen3_vl_moe",
        ("Qwen3VLMoeTextTopKRouter",),
        "Qwen3-VL-30B-A3B, Qwen3-VL-235B-A22B (text tower of the multimodal wrapper)",
        "p = softmax(Wh); top-k of p; w = p / sum_k p (always); dense layers from mlp_only_layers",
        layers="qwen_step",
        layers_path="model.language_model.layers",
        verified=(
            _CONTRACT,
            "a multimodal wrapper checkpoint (with a vision tower) routes through its text tower",
        ),
    )
)
ROWS.append(
    Family(
        "kimi_k25",
        ("DeepseekV3TopkRouter",),
        "Kimi K2.5 (Moonshot AI; DeepSeek-V3 text tower of the multimodal wrapper)",
        _NOAUX_RULE,
        layers="first_k_dense",
        layers_path="model.language_model.layers",
        verified=(
            _CONTRACT,
            "a multimodal wrapper checkpoint (with a vision tower) routes through its text tower",
        ),
        **_NOAUX,
    )
)
ROWS.append(
    Family(
        "step3p7",
        ("Step3p7TopKRouter",),
        "Step-3.7-Flash (StepFun; text tower of the multimodal wrapper)",
        "s = sigmoid(Wh); top-k of s + bias; w = s / sum_k s; the block then scales the routed output by "
        "moe_router_scaling_factor; one shared expert",
        experts="num_local_experts",
        scoring="sigmoid",
        method="noaux_tc",
        selection="sigmoid",
        bias="router.e_score_correction_bias",
        shared=1,
        layers="mlp_layer_types",
        layers_path="model.language_model.layers",
        card_note=(
            "Step-3.7: `weights` are the router's normalised weights; the MoE block multiplies the summed routed "
            "output by moe_router_scaling_factor afterwards (not included in `weights`)."
        ),
        verified=(
            _CONTRACT,
            "a multimodal wrapper checkpoint (with a vision tower) routes through its text tower",
        ),
    )
)
ROWS.append(
    Family(
        "glm5_next",
        ("Glm5NextTextTopkRouter",),
        "GLM-5 Next (zai-org; text tower of the multimodal wrapper)",
        _NOAUX_RULE,
        layers="mlp_layer_types",
        route_alone=(
            "transformers 5's GLM-5 Next sparse-attention indexer lets right padding change real tokens' "
            "routing (tests/routers/test_families: one expert set moved in a padded batch)"
        ),
        layers_path="model.language_model.layers",
        verified=(
            _CONTRACT,
            "a multimodal wrapper checkpoint (with a vision tower) routes through its text tower",
        ),
        **_NOAUX,
    )
)
ROWS.append(
    Family(
        "aria_text",
        ("AriaTextTopKRouter",),
        "Aria text decoder (rhymes-ai; an aria_text checkpoint)",
        "l = Wh; top-k of l (k = moe_topk); w = softmax over the k chosen logits; shared experts",
        experts="moe_num_experts",
        top_k="moe_topk",
        selection="logits",
        shared="moe_num_shared_experts",
        router_path="mlp.router",
        verified=(_CONTRACT,),
    )
)

FAMILIES = {row.name: row for row in ROWS}
ADAPTER_CLASSES = {row.name: adapter_class(row) for row in ROWS}
globals().update(ADAPTER_CLASSES)
