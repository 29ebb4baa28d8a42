"""Qwen3.5-MoE routing (Qwen/Qwen3.5-35B-A3B and the other Qwen3.5 MoE releases), as transformers
implements it.

Router (`Qwen3_5MoeTopKRouter`, at `mlp.gate`), per token h:
    p = softmax(W h)                                     over all N = num_experts; logits in the model
                                                         dtype, softmax in float32
    E = top-k experts of p                               (top_k = num_experts_per_tok), sorted, highest first
    w_e = p_e / sum_{E} p                                always renormalised, then cast to the model dtype
The weights are after renormalisation (they sum to 1), with no scaling factor: the factor each chosen
expert's output is multiplied by. Each MoE block also runs one shared expert (an MLP of
shared_expert_intermediate_size) on every token, gated by sigmoid(w_shared . h); that gate is not part of
the recorded top-k. Every decoder layer is MoE (the token mixers alternate between Gated DeltaNet linear
attention and full attention, per `layer_types`; the MLP side is the same in all of them).

transformers' Qwen3.5-MoE config drops Qwen3-Next's `norm_topk_prob`, `decoder_sparse_step` and
`mlp_only_layers`: the router always renormalises and no layer is dense, whatever a config.json says. The
spec reports what the model computes, and a config that asks for something else gets a warning.

Released checkpoints are the multimodal `qwen3_5_moe` wrapper, whose MoE settings sit in `text_config`;
`AutoModelForCausalLM` loads only the text decoder (`Qwen3_5MoeForCausalLM`), and the vision tower is never
run. A text-only `qwen3_5_moe_text` checkpoint is read the same way.
"""

from __future__ import annotations

import warnings

from atlas_build.routers.base import RouterAdapter, RoutingSpec, decoder_config


class Qwen3_5MoeTextAdapter(RouterAdapter):
    name = "qwen3_5_moe_text"
    model_types = ("qwen3_5_moe_text",)
    router_class_names = ("Qwen3_5MoeTopKRouter",)
    selection_score_kind = "softmax probability over all routed experts (what top-k selects on)"
    family = "Qwen3.5-MoE text decoder (a qwen3_5_moe_text checkpoint)"
    verified = ("Gated DeltaNet and full-attention layers",)

    def routing_spec(self, config) -> RoutingSpec:
        text = decoder_config(config)
        ignored = {
            key: value
            for key, value in (
                ("norm_topk_prob", getattr(text, "norm_topk_prob", True)),
                ("mlp_only_layers", getattr(text, "mlp_only_layers", None) or []),
                ("decoder_sparse_step", getattr(text, "decoder_sparse_step", 1)),
            )
            if value not in (True, [], 1)
        }
        if ignored:
            warnings.warn(
                f"{self.name}: config sets {ignored}, which transformers' Qwen3.5-MoE ignores: every layer "
                "is MoE and the top-k weights are renormalised; the recorded routing is what the model computes",
                stacklevel=2,
            )
        return RoutingSpec.softmax_greedy(
            n_routed_experts=text.num_experts,
            top_k=text.num_experts_per_tok,
            norm_topk_prob=True,
            moe_layers=range(text.num_hidden_layers),
            n_shared_experts=1,
        )

    def selection_scores(self, router, inputs, output):
        """Router forward -> float32 `[tokens, N]`: softmax of the logits (`output[0]`) in float32, the
        `router_probs` Qwen3_5MoeTopKRouter takes its top-k of (before it renormalises the k chosen)."""
        import torch

        return torch.nn.functional.softmax(output[0], dtype=torch.float, dim=-1)


class Qwen3_5MoeAdapter(Qwen3_5MoeTextAdapter):
    name = "qwen3_5_moe"
    model_types = ("qwen3_5_moe",)
    family = "Qwen3.5-35B-A3B and the other Qwen3.5 MoE releases (text decoder of the wrapper)"
    verified = (
        "a multimodal wrapper checkpoint (with a vision tower) routes through its text decoder",
        "Gated DeltaNet and full-attention layers",
        "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed",
    )
