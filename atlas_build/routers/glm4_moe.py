"""GLM-4 MoE routing (zai-org GLM-4.5, GLM-4.5-Air, GLM-4.6), as transformers implements it.

Router (`Glm4MoeTopkRouter`, at `mlp.gate`), per token h, in float32 whatever the model dtype:
    s = sigmoid(W h)                                     scores, [N = n_routed_experts]
    c = s + e_score_correction_bias                      choice scores (the bias only steers selection)
    group score = sum of the top-2 c within each of n_group groups
    keep the topk_group best groups, mask the rest to -inf
    E = top-k experts of c                               (top_k = num_experts_per_tok)
    w_e = s_e / (sum_{E} s + 1e-20)  (if norm_topk_prob)  * routed_scaling_factor
This is DeepSeek-V3's rule ("noaux_tc", as GLM-4.5 publishes it) with its own module classes; with
transformers' default n_group = topk_group = 1 the group limit is a no-op. The recorded weights are after
normalisation and after scaling (they sum to routed_scaling_factor when norm_topk_prob is set): the factor
each chosen expert's output is multiplied by. Both top-k calls use `sorted=False`, so the router's own order
is arbitrary; the engine re-sorts by weight. Each MoE block also adds `n_shared_experts` shared experts (one
MLP of n_shared_experts * moe_intermediate_size) on every token, outside the recorded top-k.

Layers below `first_k_dense_replace` are dense MLPs; every later layer is MoE. The multi-token-prediction
layers that releases append (`num_nextn_predict_layers`) are not built by transformers, so never routed.
"""

from __future__ import annotations

from atlas_build.routers.deepseek_v3 import DeepseekV3Adapter


class Glm4MoeAdapter(DeepseekV3Adapter):
    """DeepSeek-V3's spec and selection scores (the same rule), under GLM-4 MoE's own module classes."""

    name = "glm4_moe"
    model_types = ("glm4_moe",)
    router_class_names = ("Glm4MoeTopkRouter",)
    selection_score_kind = (
        "sigmoid(router logits) + e_score_correction_bias: the bias-corrected score GLM-4 MoE chooses on, "
        "before the group mask (the gate weights use the sigmoid without the bias)"
    )
    family = "GLM-4.5, GLM-4.5-Air, GLM-4.6 (zai-org)"
    verified = (
        "the correction bias and the group limit change some choices",
        "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed",
    )
