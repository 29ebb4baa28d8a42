"""OLMoE routing (allenai/OLMoE-1B-7B and its instruct variants).

Router (`OlmoeTopKRouter`), per token h:
    p = softmax(W h)                                     over all N = num_experts, in float32
    E = top-k experts of p                               (top_k = num_experts_per_tok)
    w_e = p_e / sum_{E} p  if norm_topk_prob, else p_e   then cast to the model dtype
Every decoder layer is MoE; there are no shared experts.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec


class OlmoeAdapter(RouterAdapter):
    name = "olmoe"
    model_types = ("olmoe",)
    router_class_names = ("OlmoeTopKRouter",)
    family = "OLMoE-1B-7B (allenai)"

    def routing_spec(self, config) -> RoutingSpec:
        return RoutingSpec.softmax_greedy(
            n_routed_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=bool(config.norm_topk_prob),
            moe_layers=range(config.num_hidden_layers),
        )
