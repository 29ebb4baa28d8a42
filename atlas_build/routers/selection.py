"""Each scoring family's own choice rule, re-applied with some experts removed (`atlas intervene`).

A router adapter reads what the router chose; this module makes the router choose again, through the same
adapter (its `selection_scores`, its spec), with an exclusion mask `[tokens, N]`:

    rule            families                              selection score    gate weights of the chosen E
    softmax         Mixtral, OLMoE, Qwen2/3/3-Next/3-VL/  p = softmax(l)     p' = p renormalised over the
                    3.5 MoE, FlexOlmo, Hunyuan-A13B,      (bias b: ERNIE,    experts left; p'_E (/ sum if
                    Jamba, MiniMax-Text-01, DeepSeek-V2;  LongCat: p' + b)   norm_topk_prob) * scale
                    with a bias: ERNIE-4.5, LongCat-Flash
    logits_softmax  GPT-OSS, Granite MoE (4 kinds), Aria  l (+ router bias)  softmax over the k chosen l
    sigmoid_bias    DeepSeek-V3/R1/V3.2 and its copies    sigmoid(l) + b     s = sigmoid(l); s_E (/ sum if
                    (grouped), MiniMax-M2, LFM2, AFMoE,                      norm_topk_prob) * scale
                    Laguna (soft-capped l), HY-V3, Step-3.7
    score_fn_bias   DeepSeek-V4 (config.scoring_func,     f(l) + b           s = f(l), the router's own
                    sqrt-softplus)                                           score_fn; s_E / sum * scale
    logits_sigmoid  Llama 4                               l                  sigmoid(l_E)

A family read through the router contract gets its rule from its `Family` row alone (`family_rule`, exposed
as `TableAdapter.selection_rule`): `selection` softmax / sigmoid / scoring_func / logits gives the rule, the
row's bias, group limit, normalisation flag and scale come through the routing spec and the adapter's
selection scores, and `outputs` says where the weights and index are written back. The hand-written adapters
(DeepSeek-V2, Qwen3.5-MoE, Llama 4) are listed in `RULES`. Where a family's normalisation differs from
`w / (sum + 1e-20)` by an epsilon (ERNIE's max(sum, moe_norm_min), LFM2's sum + 1e-6) the difference is far
below the 1e-5 the tests allow.

Removing an expert means it is out of the router: its logit is -inf (a softmax renormalises over the rest;
a bias, ERNIE's and LongCat's, is then added to the renormalised probability, which can change the choice),
and its selection score is -inf before the family's group limit (DeepSeek-V2's max-in-group, DeepSeek-V3's
sum of the best two) and top-k. Two other interventions use the same rule: zeroing the gate weight of removed
experts (the router's choice kept), and forcing a chosen set (transplant), its weights by the family's rule.

Refused or special, by name:
- DeepSeek-V4's hash layers (`routing_kind` hash): the experts are the token id's row of a fixed table; no
  score ranks the other experts, so re-routing ablation there is refused (`refuse_reroute`, before any
  forward); zeroing gate weights and transplant keep their meaning (the weights are the learned score_fn).
- LongCat-Flash's zero-computation experts (the last `n_zero_experts` ids) are identity experts (the token's
  input times its weight, no compute). They are removed like any other: the router then fills the slot with
  the next best expert, a computing one or another zero expert; zeroing one's weight drops its identity term.

Torch only; nothing here imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError

SOFTMAX, LOGITS_SOFTMAX, SIGMOID_BIAS, LOGITS_SIGMOID, SCORE_FN_BIAS = (
    "softmax",
    "logits_softmax",
    "sigmoid_bias",
    "logits_sigmoid",
    "score_fn_bias",
)
# What the gate weights are made of: the selection scores as the adapter gives them, or an activation of the
# router's logits output (without the selection bias): softmax, sigmoid, or the router's own `score_fn`.
SCORES, SOFTMAX_OF_LOGITS, SIGMOID_OF_LOGITS, SCORE_FN_OF_LOGITS = "scores", "softmax", "sigmoid", "score_fn"

# Router output layouts: transformers 5's `(logits, top_k_weights, top_k_index)`, or Llama 4's
# `(dense scores [T, N], logits)` whose MoE block multiplies each expert's input by its dense score.
TRIPLE, DENSE = "logits_weights_index", "dense_scores_logits"


@dataclass(frozen=True)
class SelectionRule:
    """One family's choice rule.

    Attributes:
        name: the rule (`softmax`, `logits_softmax`, `sigmoid_bias`, `score_fn_bias`, `logits_sigmoid`).
        layout: the router's output layout (`TRIPLE` or `DENSE`).
        values: what the gate weights are made of (`SCORES`, or an activation of the router's logits).
        outputs: positions of (logits, weights, index) in a `TRIPLE` output.
    """

    name: str
    layout: str = TRIPLE
    values: str = ""
    outputs: tuple[int, int, int] = (0, 1, 2)

    @property
    def gate_values(self) -> str:
        if self.values:
            return self.values
        return SIGMOID_OF_LOGITS if self.name == SIGMOID_BIAS else SCORES


def family_rule(row) -> SelectionRule:
    """The rule of a contract `Family` row (`routers/contract.py`), from its fields alone.

    `selection` softmax -> `softmax` (weights: softmax of the logits, bias not included, renormalised over the
    experts left); sigmoid -> `sigmoid_bias` (weights: sigmoid of the logits); scoring_func -> `score_fn_bias`
    (weights: the router's `score_fn`, i.e. ACT2FN[config.scoring_func], of the logits); logits ->
    `logits_softmax` (every contract family with logit selection takes a softmax over the k chosen logits).
    Group limits, the normalisation flag and the scale come from the routing spec the row gives.
    """
    by_selection = {
        "softmax": (SOFTMAX, SOFTMAX_OF_LOGITS),
        "sigmoid": (SIGMOID_BIAS, SIGMOID_OF_LOGITS),
        "scoring_func": (SCORE_FN_BIAS, SCORE_FN_OF_LOGITS),
        "logits": (LOGITS_SOFTMAX, SCORES),
    }
    name, values = by_selection[row.selection]
    return SelectionRule(name, TRIPLE, values, tuple(row.outputs))


# The hand-written adapters' rules; a contract family's rule is derived from its `Family` row (`family_rule`,
# exposed as `TableAdapter.selection_rule`).
RULES: dict[str, SelectionRule] = {
    **{name: SelectionRule(SOFTMAX) for name in ("qwen3_5_moe", "qwen3_5_moe_text", "deepseek_v2")},
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


def refuse_reroute(adapter: RouterAdapter, spec: RoutingSpec, layer: int, experts=()) -> None:
    """Refuse re-routing (ablation by the family's rule) where the rule cannot choose among the rest.

    Raises:
        UnsupportedModelError: `layer` is one of the spec's token-id hash layers (DeepSeek-V4's
            `hash_moe`), or removing `experts` can leave the group limit fewer than top-k experts to choose.
    """
    grouped = spec.topk_method in ("group_limited_greedy", "noaux_tc") and spec.n_group and spec.topk_group
    if grouped and experts:
        per_group = spec.n_routed_experts // spec.n_group
        left = [per_group - sum(1 for e in set(experts) if e // per_group == g) for g in range(spec.n_group)]
        # A group's score is its best expert (group_limited_greedy) or the sum of its best two (noaux_tc): a
        # group with fewer left has no finite score. Worst case: the eligible groups with fewest left kept.
        need = 2 if spec.topk_method == "noaux_tc" else 1
        eligible = sorted(n for n in left if n >= need)
        if len(eligible) < spec.topk_group or sum(eligible[: spec.topk_group]) < spec.top_k:
            raise UnsupportedModelError(
                f"{adapter.name}: removing experts {sorted(set(experts))} at decoder layer {layer} can leave "
                f"the group limit ({spec.topk_group} of {spec.n_group} groups of {per_group}) fewer than "
                f"top-k = {spec.top_k} experts to choose from; remove fewer experts per group"
            )
    if layer in spec.hash_layers:
        raise UnsupportedModelError(
            f"{adapter.name}: decoder layer {layer} routes by a fixed token-id hash table (routing_kind "
            "hash): its experts are the token's table row, not a top-k of a score, so there is no rule to "
            'choose among the other experts; re-routing ablation is refused there (use "ablation": '
            '"zero_weight" or a learned layer)'
        )


def gate_values(rule: SelectionRule, router, output, scores):
    """float32 `[T, N]` of what the family's gate weights are made of (probabilities, sigmoid, logits)."""
    kind = rule.gate_values
    if kind == SCORES:
        return scores
    logits = output[rule.outputs[0]]
    if kind == SOFTMAX_OF_LOGITS:
        return logits.float().softmax(dim=-1)
    if kind == SIGMOID_OF_LOGITS:
        return logits.float().sigmoid()
    return router.score_fn(logits).float()


def _renormalised(probs, excluded):
    """The removed experts are out of the router: its softmax is over the experts left."""
    probs = probs.masked_fill(excluded, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def weights_of(rule: SelectionRule, spec: RoutingSpec, values, index, excluded=None):
    """The family's gate weights float32 `[T, k]` of the chosen `index` `[T, k]`."""
    import torch

    if rule.name == LOGITS_SOFTMAX:
        return torch.softmax(values.gather(1, index), dim=-1)
    if rule.name == LOGITS_SIGMOID:
        return values.gather(1, index).sigmoid()
    if rule.name == SOFTMAX and excluded is not None:
        values = _renormalised(values, excluded)
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
    if getattr(adapter, "is_hash_router", lambda _: False)(router):
        raise UnsupportedModelError(
            f"{adapter.name}: a token-id hash router has no score to choose among the other experts; "
            "re-routing ablation is refused at its layers"
        )
    scores = adapter.selection_scores(router, inputs, output).float()
    values = gate_values(rule, router, output, scores)
    if rule.name == SOFTMAX:
        # The softmax over the experts left, plus the selection bias where the family adds one (ERNIE,
        # LongCat): renormalising rescales the probabilities but not the bias, so it can change the choice.
        kept = _renormalised(values, excluded)
        scores, values = kept + (scores - values), kept
    choice = scores.masked_fill(excluded, float("-inf"))
    choice = choice.masked_fill(~_group_mask(choice, spec), float("-inf"))
    index = torch.topk(choice, spec.top_k, dim=-1, sorted=True).indices
    return index, weights_of(rule, spec, values, index)


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
    _, weights_at, index_at = rule.outputs
    out = list(output)
    out[weights_at] = weights.to(output[weights_at].dtype)
    out[index_at] = index.to(output[index_at].dtype)
    return tuple(out)


__all__ = [
    "RULES",
    "SelectionRule",
    "choose_without",
    "family_rule",
    "refuse_reroute",
    "rule_for",
    "weights_for",
    "write_router_output",
    "zero_weights",
]
