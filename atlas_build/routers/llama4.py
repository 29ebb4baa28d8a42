"""Llama 4 routing (meta-llama Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E), as transformers
implements it.

Router (`Llama4Router`, an `nn.Linear` at `feed_forward.router`), per token h, in the model's dtype:
    l = W h                                              logits, [N = num_local_experts], no bias
    E = top-k experts of l                               (top_k = num_experts_per_tok: 1 in the releases)
    w_e = sigmoid(l_e)                                   sigmoid of each chosen logit alone (computed in
                                                         float32, cast back to the model dtype)
The weights are neither normalised nor scaled: a top-1 weight lies in (0, 1), and top-k weights need not
sum to 1. Unlike the other architectures, `Llama4TextMoe` multiplies each chosen expert's *input* by w_e
(`routed_in = h * w_e`), not its output; for the expert's SwiGLU that is not the same thing, so the recorded
weight is the router's gate value, not an output mixing coefficient. One shared expert (an MLP of
intermediate_size) runs on every token, ungated, outside the recorded top-k. This matches Meta's
reference implementation (llama-models `moe.py`: top-k of the router logits, the rest set to -inf, sigmoid,
inputs scaled by the scores); transformers ignores `router_jitter_noise` at inference, as the reference does.

The router returns `(scores [T, N], logits [T, N])`, where `scores` is sigmoid(l) on the chosen experts and
sigmoid(-inf) = 0 elsewhere. The chosen experts are read as `topk(logits, k)`: the very call the router made
on the very same tensor, so the same experts, in the same order (sorted, highest first); reading them off
the non-zero scores would lose experts whose sigmoid underflows to 0 in bfloat16 or float16.

MoE layers are `config.moe_layers`, which transformers fills from `interleave_moe_layer_step` s when a
config leaves it unset: layers s-1, 2s-1, ... (Scout: s = 1, every layer; Maverick: s = 2, every second
layer). The other layers are dense MLPs of intermediate_size_mlp.

Released Llama 4 checkpoints are the multimodal `llama4` wrapper with the text decoder's settings in
`text_config`; `AutoModelForCausalLM` loads only the text decoder (`Llama4ForCausalLM`), and the vision tower
is never run. A text-only `llama4_text` checkpoint is read the same way.
"""

from __future__ import annotations

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError, decoder_config


class Llama4TextAdapter(RouterAdapter):
    name = "llama4_text"
    model_types = ("llama4_text",)
    router_class_names = ("Llama4Router",)
    router_path = "feed_forward.router"
    experts_path = "feed_forward.experts"
    selection_score_kind = (
        "raw router logits W h (no bias): what Llama 4 takes its top-k of (the gate weight is the sigmoid "
        "of each chosen logit, taken after the choice)"
    )
    family = "Llama 4 text decoder (a llama4_text checkpoint)"
    verified = (
        "interleaved dense/MoE layers",
        "top-2 order",
        "experts read from the logits when sigmoid underflows",
        "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed",
    )

    def routing_spec(self, config) -> RoutingSpec:
        text = decoder_config(config)
        moe_layers = tuple(sorted(i for i in text.moe_layers if 0 <= i < text.num_hidden_layers))
        if not moe_layers:
            raise UnsupportedModelError(
                f"{self.name}: the config has no MoE layer (moe_layers={list(text.moe_layers)}, "
                f"num_hidden_layers={text.num_hidden_layers}): it is a dense model"
            )
        return RoutingSpec(
            n_routed_experts=text.num_local_experts,
            top_k=text.num_experts_per_tok,
            n_shared_experts=1,
            scoring_func="sigmoid",
            topk_method="greedy",
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            moe_layers=moe_layers,
        )

    def read_router_output(self, output, router=None):
        import torch

        if router is None:
            raise TypeError("llama4: reading the router's output needs the router module (for its top_k)")
        scores, logits = output
        index = torch.topk(logits, router.top_k, dim=1).indices
        return index, scores.gather(1, index)

    def selection_scores(self, router, inputs, output):
        """Router forward -> float32 `[tokens, N]`: the raw logits (`output[1]`, in the model dtype, cast to
        float32 exactly), the very tensor Llama4Router takes its top-k of. Logits rather than their sigmoid:
        sigmoid is monotone, so the choice is the same, but it saturates in float32 and would turn distinct
        logits into ties; the `greedy` rule (top-k of these scores) gives back the choice."""
        return output[1].float()

    def card_notes(self, config) -> list[str]:
        return [
            "Llama 4: `weights` are sigmoid(router logit) of each chosen expert, neither normalised nor "
            "scaled; the model multiplies the expert's input (not its output) by it, and adds one ungated "
            "shared expert on every token."
        ]


class Llama4Adapter(Llama4TextAdapter):
    name = "llama4"
    model_types = ("llama4",)
    family = "Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E (meta-llama; text decoder of the wrapper)"
    verified = (
        "a multimodal wrapper checkpoint (with a vision tower) routes through its text decoder",
        "interleaved dense/MoE layers",
        "atlas build + atlas validate on the tiny checkpoint, the atlas routing recomputed",
    )
