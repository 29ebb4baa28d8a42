"""DeepSeek-V3 / DeepSeek-R1 routing (also the built-in tiny-deepseek-v3).

Router (`DeepseekV3TopkRouter`), per token h:
    s = sigmoid(W h)                                     scores, float32, [N]
    c = s + e_score_correction_bias                      choice scores (bias only steers selection)
    group score = sum of the top-2 c within each of n_group groups
    keep the topk_group best groups, mask the rest to -inf
    E = top-k experts of c                               (top_k = num_experts_per_tok)
    w_e = s_e / sum_{E} s  (if norm_topk_prob)  * routed_scaling_factor
Layers below `first_k_dense_replace` are dense MLPs; the rest are MoE with shared experts.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec


class DeepseekV3Adapter(RouterAdapter):
    name = "deepseek_v3"
    model_types = ("deepseek_v3",)
    router_class_names = ("DeepseekV3TopkRouter",)
    selection_score_kind = (
        "sigmoid(router logits) + e_score_correction_bias: the bias-corrected score DeepSeek-V3/R1 "
        "chooses on, before the group mask (the gate weights use the sigmoid without the bias)"
    )
    family = "DeepSeek-V3, DeepSeek-R1 (and the built-in tiny-deepseek-v3, RANDOM-INIT)"
    verified = (
        "the correction bias and the group limit change some choices",
        "atlas build on the built-in tiny-deepseek-v3, the atlas routing recomputed (tests/spine)",
    )

    def routing_spec(self, config) -> RoutingSpec:
        first_dense = config.first_k_dense_replace or 0
        return RoutingSpec(
            n_routed_experts=config.n_routed_experts,
            top_k=config.num_experts_per_tok,
            n_shared_experts=config.n_shared_experts or 0,
            scoring_func="sigmoid",
            topk_method="noaux_tc",
            norm_topk_prob=bool(config.norm_topk_prob),
            routed_scaling_factor=float(config.routed_scaling_factor),
            moe_layers=tuple(range(first_dense, config.num_hidden_layers)),
            n_group=config.n_group,
            topk_group=config.topk_group,
        )

    def selection_scores(self, router, inputs, output):
        # As DeepseekV3TopkRouter.forward: sigmoid of the float32 logits plus the correction bias.
        logits = output[0]
        return logits.float().sigmoid() + router.e_score_correction_bias.float()
