"""Each scoring family's own choice rule, re-applied with some experts removed (`atlas intervene`).

A router adapter reads what the router chose; this module makes the router choose again, through the same
adapter (its `selection_scores`, its spec), with an exclusion mask `[tokens, N]`:

    rule              families                         selection scores      gate weights of the chosen E
    softmax           Mixtral, OLMoE, Qwen2/3/3.5-MoE,  p = softmax(logits)   p' = p renormalised over the
                      DeepSeek-V2                                             experts left; p'_E (/ sum if
                                                                              norm_topk_prob) * scale
    logits_softmax    GPT-OSS                           l = logits + bias     softmax over the k chosen l
    sigmoid_bias      DeepSeek-V3/R1, GLM-4 MoE         c = sigmoid(l) + b    s = sigmoid(l); s_E (/ sum if
                                                                              norm_topk_prob) * scale
    logits_sigmoid    Llama 4                           l = logits            sigmoid(l_E)

Removing an expert means the router cannot choose it: its selection score becomes -inf before the
family's group limit (DeepSeek-V2's max-in-group, DeepSeek-V3/GLM's sum of the best two) and top-k. For the
softmax families this is the router of a model whose removed experts' logits are -inf, so the probabilities
of the rest are renormalised (the same experts are chosen either way; the weights differ only without
norm_topk_prob). Two other interventions use the same rule: zeroing the gate weight of removed experts (the
router's choice kept), and forcing a chosen set (transplant), its weights by the family's weight rule.

The rule is data: `RULES` by adapter name (an adapter may also set `selection_rule` itself). Torch only;
nothing here imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError

SOFTMAX, LOGITS_SOFTMAX, SIGMOID_BIAS, LOGITS_SIGMOID = (
    "softmax",
    "logits_softmax",
    "sigmoid_bias",
    "logits_sigmoid",
)

# Router output layouts: transformers 5's `(logits, top_k_weights, top_k_index)`, or Llama 4's
# `(dense scores [T, N], logits)` whose MoE block multiplies each expert's input by its dense score.
TRIPLE, DENSE = "logits_weights_index", "dense_scores_logits"


@dataclass(frozen=True)
class SelectionRule:
    name: str
    layout: str = TRIPLE


RULES: dict[str, SelectionRule] = {
    **{
        name: SelectionRule(SOFTMAX)
        for name in (
            "mixtral",
            "olmoe",
            "qwen2_moe",
            "qwen3_moe",
            "qwen3_5_moe",
            "qwen3_5_moe_text",
            "deepseek_v2",
        )
    },
    "gpt_oss": SelectionRule(LOGITS_SOFTMAX),
    "deepseek_v3": SelectionRule(SIGMOID_BIAS),
    "glm4_moe": SelectionRule(SIGMOID_BIAS),
    "llama4": SelectionRule(LOGITS_SIGMOID, DENSE),
    "llama4_text": SelectionRule(LOGITS_SIGMOID, DENSE),
}


def rule_for(adapter: RouterAdapter) -> SelectionRule:
    """The adapter's selection rule (its own `selection_rule` attribute, else `RULES[adapter.name]`).

    Raises:
        UnsupportedModelError: the adapter has no rule or no selection scores (interventions unavailable).
    """
    rule = getattr(adapter, "selection_rule", None) or RULES.get(adapter.name)
    if rule is None or not adapter.gives_selection_scores:
        raise UnsupportedModelError(
            f"router adapter {adapter.name!r} has no selection rule: `atlas intervene` cannot re-route this "
            "architecture (add its rule to atlas_build/routers/selection.py RULES)"
        )
    return rule if isinstance(rule, SelectionRule) else SelectionRule(str(rule))


def _group_mask(choice, spec: RoutingSpec):
    """Boolean `[T, N]`: experts inside each token's `topk_group` best groups (all True without groups)."""
    import torch

    grouped = spec.topk_method in ("group_limited_greedy", "noaux_tc") and spec.n_group and spec.topk_group
    if not grouped:
        return torch.ones_like(choice, dtype=torch.bool)
    tokens, n = choice.shape
    per_group = n // spec.n_group
    view = choice.view(tokens, spec.n_group, per_group)
    if spec.topk_method == "noaux_tc":
        group_scores = view.topk(min(2, per_group), dim=-1).values.sum(dim=-1)
    else:
        group_scores = view.amax(dim=-1)
    best = group_scores.topk(spec.topk_group, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    return keep.repeat_interleave(per_group, dim=1)


def gate_values(rule: SelectionRule, router, output, scores):
    """float32 `[T, N]` of what the family's gate weights are made of (probabilities, sigmoid, logits)."""
    if rule.name == SIGMOID_BIAS:
        return output[0].float().sigmoid()
    return scores


def weights_of(rule: SelectionRule, spec: RoutingSpec, values, index, excluded=None):
    """The family's gate weights float32 `[T, k]` of the chosen `index` `[T, k]`."""
    import torch

    if rule.name == LOGITS_SOFTMAX:
        return torch.softmax(values.gather(1, index), dim=-1)
    if rule.name == LOGITS_SIGMOID:
        return values.gather(1, index).sigmoid()
    if rule.name == SOFTMAX and excluded is not None:
        values = values.masked_fill(excluded, 0.0)
        values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    weights = values.gather(1, index)
    if spec.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * spec.routed_scaling_factor


def choose_without(
    adapter: RouterAdapter, spec: RoutingSpec, router, inputs, output, excluded
) -> tuple[Any, Any]:
    """The family's own choice with `excluded` (bool `[T, N]`) removed: `(index long [T, k], weights float32
    [T, k])`, highest selection score first."""
    import torch

    rule = rule_for(adapter)
    scores = adapter.selection_scores(router, inputs, output).float()
    choice = scores.masked_fill(excluded, float("-inf"))
    choice = choice.masked_fill(~_group_mask(choice, spec), float("-inf"))
    index = torch.topk(choice, spec.top_k, dim=-1, sorted=True).indices
    values = gate_values(rule, router, output, scores)
    return index, weights_of(rule, spec, values, index, excluded)


def zero_weights(adapter: RouterAdapter, router, output, excluded) -> tuple[Any, Any]:
    """The router's own choice, with the gate weight of every `excluded` expert set to 0 (the others kept
    as they are: no renormalisation)."""
    import torch

    index, weights = adapter.read_router_output(output, router)
    index = index.long()
    off = excluded.gather(1, index)
    return index, torch.where(off, torch.zeros_like(weights), weights).float()


def weights_for(adapter: RouterAdapter, spec: RoutingSpec, router, inputs, output, index):
    """The family's gate weights float32 `[T, k]` for a forced choice `index` (transplanted routing)."""
    rule = rule_for(adapter)
    scores = adapter.selection_scores(router, inputs, output).float()
    return weights_of(rule, spec, gate_values(rule, router, output, scores), index)


def write_router_output(adapter: RouterAdapter, output, index, weights):
    """The router's output with its choice replaced by `(index [T, k], weights [T, k])`, in its own layout and
    dtypes, so that the MoE block runs the new choice (a zero weight switches an expert off)."""
    import torch

    rule = rule_for(adapter)
    if rule.layout == DENSE:
        scores, logits = output
        dense = torch.zeros_like(scores).scatter(1, index, weights.to(scores.dtype))
        # Logits that give back `index`, in its order, under the adapter's reading (top-k of the logits); the
        # MoE block itself reads only the dense scores.
        rank = torch.arange(index.shape[1], 0, -1, device=logits.device, dtype=logits.dtype)
        forced = torch.full_like(logits, float("-inf")).scatter(
            1, index, rank.expand(index.shape).contiguous()
        )
        return dense, forced
    logits, old_weights, old_index = output
    return logits, weights.to(old_weights.dtype), index.to(old_index.dtype)


__all__ = [
    "RULES",
    "SelectionRule",
    "choose_without",
    "rule_for",
    "weights_for",
    "write_router_output",
    "zero_weights",
]
