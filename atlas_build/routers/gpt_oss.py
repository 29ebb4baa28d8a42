"""GPT-OSS routing (openai/gpt-oss-20b, openai/gpt-oss-120b), as transformers implements it.

Router (`GptOssTopKRouter`, at `mlp.router`), per token h, in the model's dtype (no float32 upcast):
    l = W h + b                                          logits, [N = num_local_experts]; the router has a bias
    E = top-k experts of l                               (top_k = num_experts_per_tok), sorted, highest first
    w_e = exp(l_e) / sum_{E} exp(l)                      softmax over the k chosen logits only
The softmax comes after the top-k, over the chosen logits. That is the same as Mixtral's rule (softmax over
all N, top-k, renormalise over the k), because exp is monotone and the full softmax's denominator cancels:
so the spec says softmax / greedy / norm_topk_prob = True, and the weights sum to 1, with no scaling. They
are what each chosen expert's output is multiplied by. Every decoder layer is MoE; no shared experts. This
is the routing of OpenAI's reference implementation (`torch.topk` on the gate output, then softmax of the
top-k values); transformers computes the logits in the model dtype, as the reference does in bfloat16.

`GptOssMLP` can be replaced by a hub kernel (`use_kernels=True`); the engine never asks for it, and if the
router module were bypassed the engine would stop with "ran 0 times" rather than record nothing.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec


class GptOssAdapter(RouterAdapter):
    name = "gpt_oss"
    model_types = ("gpt_oss",)
    router_class_names = ("GptOssTopKRouter",)
    router_path = "mlp.router"
    selection_score_kind = (
        "router logits W h + b, bias included: what GPT-OSS takes its top-k of (its softmax is over the k "
        "chosen logits only, after the choice)"
    )
    family = "gpt-oss-20b, gpt-oss-120b (OpenAI)"
    verified = (
        "the router bias changes some choices",
        "sliding-window layers",
        "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed",
    )

    def routing_spec(self, config) -> RoutingSpec:
        return RoutingSpec.softmax_greedy(
            n_routed_experts=config.num_local_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=True,  # softmax over the k chosen logits: the weights always sum to 1
            moe_layers=range(config.num_hidden_layers),
        )

    def selection_scores(self, router, inputs, output):
        """Router forward -> float32 `[tokens, N]`: the router logits with the bias (`output[0]`, in the model
        dtype, cast to float32 exactly), the very tensor GptOssTopKRouter takes its top-k of. Not a softmax
        probability: the router's softmax runs over the k chosen logits only, so no probability over all N
        exists in the model; the `greedy` rule (top-k of these scores) gives back its choice."""
        return output[0].float()
