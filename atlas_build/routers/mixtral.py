"""Mixtral routing (Mixtral-8x7B, Mixtral-8x22B and their fine-tunes).

Router (`MixtralTopKRouter`), per token h:
    p = softmax(W h)                                     over all N = num_local_experts, in float32
    E = top-k experts of p                               (top_k = num_experts_per_tok)
    w_e = p_e / sum_{E} p                                always renormalised; no scaling factor
Every decoder layer is MoE; there are no shared experts.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec


class MixtralAdapter(RouterAdapter):
    name = "mixtral"
    model_types = ("mixtral",)
    router_class_names = ("MixtralTopKRouter",)
    family = "Mixtral-8x7B, Mixtral-8x22B"

    def routing_spec(self, config) -> RoutingSpec:
        return RoutingSpec.softmax_greedy(
            n_routed_experts=config.num_local_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=True,  # Mixtral always renormalises
            moe_layers=range(config.num_hidden_layers),
        )
