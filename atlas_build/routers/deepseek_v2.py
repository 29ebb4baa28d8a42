"""DeepSeek-V2 / DeepSeek-V2-Lite / DeepSeek-V2.5 routing, as transformers 5 implements it.

Router (`DeepseekV2TopkRouter`), per token h:
    p = softmax(W h)                                     float32, over all N routed experts
    topk_method "greedy":                E = top-k experts of p
    topk_method "group_limited_greedy":  group score = max of p within each of n_group groups;
                                         keep the topk_group best groups (p elsewhere set to 0), E = top-k of p
    w_e = p_e * routed_scaling_factor                    (top_k = num_experts_per_tok)
Layers below `first_k_dense_replace` are dense MLPs; the rest are MoE with `n_shared_experts` shared
experts (one MLP of n_shared_experts * moe_intermediate_size).

transformers reads only `topk_method`, `n_group`, `topk_group` and `routed_scaling_factor`: it ignores
`scoring_func` (always softmax), `norm_topk_prob` (never renormalises, unlike DeepSeek's own remote code
when that flag is set) and `moe_layer_freq` (every layer from `first_k_dense_replace` on is MoE). The
spec reports what the model computes, not what the config claims.
"""

from __future__ import annotations

import warnings

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError

TOPK_METHODS = ("greedy", "group_limited_greedy")


class DeepseekV2Adapter(RouterAdapter):
    name = "deepseek_v2"
    model_types = ("deepseek_v2",)
    router_class_names = ("DeepseekV2TopkRouter",)
    family = "DeepSeek-V2, DeepSeek-V2-Lite, DeepSeek-V2.5"
    verified = ("greedy and group-limited checkpoints; the group limit changes some choices",)

    def routing_spec(self, config) -> RoutingSpec:
        method = config.topk_method
        if method not in TOPK_METHODS:
            # transformers' router has no branch for anything else and would fail mid-forward.
            raise UnsupportedModelError(
                f"deepseek_v2: topk_method {method!r} is not implemented by transformers' "
                f"DeepseekV2TopkRouter (it knows {', '.join(TOPK_METHODS)})"
            )
        if getattr(config, "norm_topk_prob", False):
            warnings.warn(
                "deepseek_v2: config sets norm_topk_prob, but transformers' DeepseekV2TopkRouter does not "
                "renormalise the top-k weights; the recorded weights are unnormalised",
                stacklevel=2,
            )
        first_dense = config.first_k_dense_replace or 0
        moe_layers = tuple(range(first_dense, config.num_hidden_layers))
        if not moe_layers:
            raise UnsupportedModelError(
                f"deepseek_v2: first_k_dense_replace={first_dense} leaves no MoE layer "
                f"among {config.num_hidden_layers}"
            )
        grouped = method == "group_limited_greedy"
        return RoutingSpec(
            n_routed_experts=config.n_routed_experts,
            top_k=config.num_experts_per_tok,
            n_shared_experts=config.n_shared_experts or 0,
            scoring_func="softmax",
            topk_method=method,
            norm_topk_prob=False,
            routed_scaling_factor=float(config.routed_scaling_factor),
            moe_layers=moe_layers,
            n_group=config.n_group if grouped else None,
            topk_group=config.topk_group if grouped else None,
        )
