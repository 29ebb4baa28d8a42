"""Qwen3-MoE routing (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder MoE).

Router (`Qwen3MoeTopKRouter`), per token h:
    p = softmax(W h)                                     over all N = num_experts, in float32
    E = top-k experts of p                               (top_k = num_experts_per_tok)
    w_e = p_e / sum_{E} p  if norm_topk_prob, else p_e   then cast to the model dtype
No shared experts. Decoder layer i is MoE iff i is not in `mlp_only_layers` and
(i + 1) % decoder_sparse_step == 0 (the same rule as Qwen2-MoE).
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec
from atlas_build.routers.qwen2_moe import qwen_moe_layers


class Qwen3MoeAdapter(RouterAdapter):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    router_class_names = ("Qwen3MoeTopKRouter",)
    family = "Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder MoE"
    verified = ("dense layers from mlp_only_layers",)

    def routing_spec(self, config) -> RoutingSpec:
        return RoutingSpec.softmax_greedy(
            n_routed_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=config.norm_topk_prob,
            moe_layers=qwen_moe_layers(config, self.name),
        )
