"""Qwen2-MoE routing (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B).

Router (`Qwen2MoeTopKRouter`), per token h:
    p = softmax(W h)                                     over all N = num_experts, in float32
    E = top-k experts of p                               (top_k = num_experts_per_tok)
    w_e = p_e / sum_{E} p  if norm_topk_prob, else p_e   then cast to the model dtype
Each MoE block also runs one shared expert (an MLP of shared_expert_intermediate_size) on every token,
gated by sigmoid(w_shared . h); that gate is not part of the recorded top-k.
Decoder layer i is MoE iff i is not in `mlp_only_layers` and (i + 1) % decoder_sparse_step == 0.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError


def qwen_moe_layers(config, name: str) -> tuple[int, ...]:
    """MoE decoder layers by the rule of Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer `__init__`."""
    dense = set(config.mlp_only_layers or ())
    step = config.decoder_sparse_step
    layers = tuple(
        i
        for i in range(config.num_hidden_layers)
        if i not in dense and config.num_experts > 0 and (i + 1) % step == 0
    )
    if not layers:
        raise UnsupportedModelError(
            f"{name}: the config has no MoE layer (num_experts={config.num_experts}, "
            f"decoder_sparse_step={step}, mlp_only_layers={sorted(dense)}): it is a dense model"
        )
    return layers


class Qwen2MoeAdapter(RouterAdapter):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)
    router_class_names = ("Qwen2MoeTopKRouter",)
    family = "Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B"
    verified = ("interleaved dense/MoE layers",)

    def routing_spec(self, config) -> RoutingSpec:
        return RoutingSpec.softmax_greedy(
            n_routed_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=config.norm_topk_prob,
            moe_layers=qwen_moe_layers(config, self.name),
            n_shared_experts=1 if (config.shared_expert_intermediate_size or 0) > 0 else 0,
        )
