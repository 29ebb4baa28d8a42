"""One router contract for the transformers 5 MoE families: a declarative `Family` row per architecture.

Most transformers 5 routers (`*TopKRouter`, `*TopkRouter`, `*Router`) return `(router_logits, top_k_weights,
top_k_index)`, and `top_k_weights` is what the MoE block multiplies each chosen expert's output by. For
those families the engine needs to know only where the router sits, which output is which, how the router
computes the score it takes its top-k of (`--scores`), which decoder layers are MoE, and the routing
hyper-parameters for the models row. A `Family` says exactly that; `TableAdapter` reads any family through
it. The families live in `routers/families.py`; a family whose router does not fit keeps a hand-written
adapter, whose docstring says why.

Selection scores (`Family.selection`), computed from the router's own output as the router computes them:
    softmax        softmax(logits) in float32
    sigmoid        sigmoid(logits) in float32
    logits         the logits themselves (routers whose softmax comes after the choice, over the k)
    scoring_func   the config's `scoring_func` activation (DeepSeek-V4: sqrt(softplus))
plus a correction bias when `Family.bias` names one (DeepSeek-V3's noaux_tc and its descendants, LongCat,
ERNIE): `router.<attr>` (a tensor on the router) or `block.<attr>` (on the MoE block that owns the router,
which passes it to the router's forward); a bias the model does not have (LFM2 without use_expert_bias)
is none.

Layers (`Family.layers`) that are MoE, by the decoder-layer rule of the modeling code:
    all               every decoder layer
    mlp_layer_types   `config.mlp_layer_types[i]` is one of `Family.moe_layer_types`
    first_k_dense     i >= `config.first_k_dense_replace`
    num_dense_layers  i >= `config.num_dense_layers`
    qwen_step         i not in `mlp_only_layers` and (i + 1) % `decoder_sparse_step` == 0
    jamba             `config.layers_num_experts[i]` > 1
    ernie_interval    (i + 1) % `moe_layer_interval` == 0 and start <= i <= end index

Per-layer `routing_kind` (models row): `learned` (a learned router scores and chooses), `hash` (the experts
are a fixed lookup of the token id: DeepSeek-V4's first MoE layers, `mlp_layer_types == "hash_moe"`), `dense`
(no routing). Zero-computation experts (LongCat-Flash) take the last `n_zero_experts` ids of the router's
`n_routed_experts` outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlas_build.routers.base import RouterAdapter, RoutingSpec, UnsupportedModelError, decoder_config

SELECTIONS = ("softmax", "sigmoid", "logits", "scoring_func")
LAYER_RULES = (
    "all",
    "mlp_layer_types",
    "first_k_dense",
    "num_dense_layers",
    "qwen_step",
    "jamba",
    "ernie_interval",
)


@dataclass(frozen=True)
class Family:
    """What the engine needs to know of one MoE family whose router follows the contract.

    Config values are named by attribute (`str`) or given as constants; an attribute that may be absent
    is read with its transformers default.

    Attributes:
        name: adapter name (the registry key; the transformers `model_type`).
        router_class_names: class names of the router modules (a hash router included).
        family: released models it reads (one line).
        rule: the routing rule in one line (README table, `atlas model list`).
        experts: config attribute of the number of routed experts.
        top_k: config attribute of the number of chosen experts.
        scoring: `softmax` or `sigmoid` (models row `scoring_func`), or `scoring_func`: the config's.
        method: `greedy` or `noaux_tc` (group-limited when `groups`).
        selection: how the router's selection score is computed (see the module docstring).
        norm: whether the weights are renormalised over the k (bool, or a config attribute).
        scale: the factor the weights are multiplied by (float, or a config attribute).
        groups: the router applies `n_group` / `topk_group` group limits.
        shared: shared experts per MoE layer (int, or a config attribute; `shared_if` counts 1 when the
            named attribute is > 0).
        layers: which decoder layers are MoE (see the module docstring).
        moe_layer_types: `mlp_layer_types` values that are MoE.
        hash_layer_types: `mlp_layer_types` values routed by a token-id hash table.
        zero_experts: config attribute of the number of zero-computation experts (their ids come last).
        bias: where the selection bias is (`router.<attr>` or `block.<attr>`), if the router adds one.
        outputs: positions of (logits, weights, index) in the router's output tuple.
        layer_count: config attribute of the number of decoder-layer modules (LongCat: num_layers).
        router_path, experts_path, layers_path: where the router, its experts and the decoder layers are.
        verified: what tests/routers checks of it beyond VERIFIED_FOR_ALL.
        card_note: a sentence for the dataset card where `weights` differ from the usual meaning.
        score_kind: what the selection score is, in words (dataset card); generated when empty.
        route_alone: why padding changes the family's routing in transformers (each text then runs alone).
    """

    name: str
    router_class_names: tuple[str, ...]
    family: str
    rule: str
    experts: str = "num_experts"
    top_k: str = "num_experts_per_tok"
    scoring: str = "softmax"
    method: str = "greedy"
    selection: str = "softmax"
    norm: bool | str = True
    scale: float | str = 1.0
    groups: bool = False
    shared: int | str = 0
    shared_if: str | None = None
    layers: str = "all"
    moe_layer_types: tuple[str, ...] = ("sparse",)
    hash_layer_types: tuple[str, ...] = ()
    zero_experts: str | None = None
    bias: str | None = None
    outputs: tuple[int, int, int] = (0, 1, 2)
    layer_count: str = "num_hidden_layers"
    router_path: str = "mlp.gate"
    experts_path: str = "mlp.experts"
    layers_path: str = "model.layers"
    verified: tuple[str, ...] = ()
    card_note: str = ""
    score_kind: str = ""
    route_alone: str | None = None
    model_types: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"{self.name}: selection {self.selection!r} is not one of {SELECTIONS}")
        if self.layers not in LAYER_RULES:
            raise ValueError(f"{self.name}: layers {self.layers!r} is not one of {LAYER_RULES}")


def _value(config, value, default=None):
    if isinstance(value, str):
        found = getattr(config, value, default)
        return default if found is None else found
    return value


def _uniform(name: str, key, value):
    """A per-layer list (Hunyuan's num_experts / moe_topk) must be one value: the models row has one."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedModelError(
                f"{name}: {key} differs between layers ({list(value)}); the atlas records one expert count "
                "and one top-k per model"
            )
        return value[0]
    return value


def layer_kinds(family: Family, config) -> list[str]:
    """`learned` / `hash` / `dense` for every decoder layer of `config`, by the family's layer rule."""
    n = getattr(config, family.layer_count)
    rule = family.layers
    if rule == "all":
        return ["learned"] * n
    if rule == "mlp_layer_types":
        types = list(getattr(config, "mlp_layer_types", None) or [])
        if len(types) != n:
            raise UnsupportedModelError(
                f"{family.name}: mlp_layer_types has {len(types)} entries for {n} decoder layers"
            )
        kinds = []
        for kind in types:
            if kind in family.hash_layer_types:
                kinds.append("hash")
            elif kind in family.moe_layer_types:
                kinds.append("learned")
            else:
                kinds.append("dense")
        return kinds
    if rule in ("first_k_dense", "num_dense_layers"):
        key = "first_k_dense_replace" if rule == "first_k_dense" else "num_dense_layers"
        first = getattr(config, key, 0) or 0
        return ["dense" if i < first else "learned" for i in range(n)]
    if rule == "qwen_step":
        dense = set(getattr(config, "mlp_only_layers", None) or ())
        step = getattr(config, "decoder_sparse_step", 1) or 1
        experts = _value(config, family.experts, 0)
        return [
            "learned" if i not in dense and experts > 0 and (i + 1) % step == 0 else "dense" for i in range(n)
        ]
    if rule == "jamba":
        per_layer = list(config.layers_num_experts or [1] * n)
        return ["learned" if per_layer[i] > 1 else "dense" for i in range(n)]
    # ernie_interval
    start, end = config.moe_layer_start_index, config.moe_layer_end_index
    interval = config.moe_layer_interval
    return ["learned" if (i + 1) % interval == 0 and start <= i <= end else "dense" for i in range(n)]


class TableAdapter(RouterAdapter):
    """Reads any family described by a `Family` row (set as the class attribute `row`)."""

    row: Family

    def routing_spec(self, config) -> RoutingSpec:
        row = self.row
        text = decoder_config(config)
        kinds = layer_kinds(row, text)
        moe = tuple(i for i, kind in enumerate(kinds) if kind != "dense")
        # An empty first_k_dense layout is the shared spec check's (checks.check_routing_spec) to refuse.
        if not moe and row.layers != "first_k_dense":
            raise UnsupportedModelError(
                f"{row.name}: the config has no MoE layer (layer rule {row.layers!r} over "
                f"{text.num_hidden_layers} decoder layers): it is a dense model"
            )
        n_experts = _uniform(row.name, row.experts, _value(text, row.experts))
        zero = int(_value(text, row.zero_experts, 0) or 0) if row.zero_experts else 0
        shared = _value(text, row.shared, 0) or 0
        if row.shared_if is not None:
            shared = 1 if (getattr(text, row.shared_if, 0) or 0) > 0 else 0
        return RoutingSpec(
            n_routed_experts=int(n_experts) + zero,
            top_k=_uniform(row.name, row.top_k, _value(text, row.top_k)),
            n_shared_experts=int(shared),
            scoring_func=text.scoring_func if row.scoring == "scoring_func" else row.scoring,
            topk_method=row.method,
            norm_topk_prob=bool(_value(text, row.norm, False)),
            routed_scaling_factor=float(_value(text, row.scale, 1.0)),
            moe_layers=moe,
            n_group=text.n_group if row.groups else None,
            topk_group=text.topk_group if row.groups else None,
            hash_layers=tuple(i for i, kind in enumerate(kinds) if kind == "hash"),
            n_zero_experts=zero,
            layer_kinds=tuple(kinds),
        )

    def layer_routing_kinds(self, config) -> list[str]:
        return layer_kinds(self.row, decoder_config(config))

    def router_modules(self, model):
        out = super().router_modules(model)
        # The MoE block owning each router, for `block.<attr>` selection biases.
        self._blocks = {}
        owner_path = self.router_path.rpartition(".")[0]
        for idx, router in out:
            layer = self.decoder_layers(model)[idx]
            self._blocks[id(router)] = self._get(layer, owner_path) if owner_path else layer
        return out

    def read_router_output(self, output, router=None):
        _, weights_at, index_at = self.row.outputs
        return output[index_at], output[weights_at]

    @property
    def gives_selection_scores(self) -> bool:
        return True

    @property
    def selection_rule(self):
        """The family's choice rule for `atlas intervene`, derived from its row (`selection.family_rule`)."""
        from atlas_build.routers.selection import family_rule

        return family_rule(self.row)

    def is_hash_router(self, router) -> bool:
        """Whether `router` chooses by a token-id table lookup (no learned score decides)."""
        return type(router).__name__ in HASH_ROUTERS

    def _bias(self, router):
        where, _, attr = self.row.bias.partition(".")
        if where == "router":
            owner = router
        else:
            blocks = getattr(self, "_blocks", {})
            if id(router) not in blocks:
                raise RuntimeError(
                    f"{self.name}: the router's MoE block is unknown (router_modules not called)"
                )
            owner = blocks[id(router)]
        for part in attr.split("."):
            owner = getattr(owner, part, None)
        return owner

    def selection_scores(self, router, inputs, output):
        """The score the router takes its top-k of, as its forward computes it (see the module docstring);
        for a hash layer, the table's choice: 1 for the token's experts, 0 elsewhere (no score decides)."""
        import torch

        logits = output[self.row.outputs[0]].float()
        if self.is_hash_router(router):
            index = output[self.row.outputs[2]]
            return torch.zeros_like(logits).scatter(1, index.long(), 1.0)
        selection = self.row.selection
        if selection == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif selection == "sigmoid":
            scores = torch.sigmoid(logits)
        elif selection == "scoring_func":
            # The very activation module the router applies (ACT2FN[config.scoring_func]).
            scores = router.score_fn(output[self.row.outputs[0]]).float()
        else:
            scores = logits
        bias = self._bias(router) if self.row.bias else None
        if bias is not None:
            scores = scores + bias.float().reshape(-1)
        return scores

    def card_notes(self, config) -> list[str]:
        notes = [self.row.card_note] if self.row.card_note else []
        spec = self.routing_spec(config)
        if spec.hash_layers:
            notes.append(
                f"{self.row.name}: decoder layers {list(spec.hash_layers)} route by a fixed token-id hash "
                "table (`routing_kind` = hash): their experts are a function of the token id alone, a built-in "
                "token-identity reference, excluded from the sense metrics by default."
            )
        if spec.n_zero_experts:
            first = spec.n_routed_experts - spec.n_zero_experts
            notes.append(
                f"{self.row.name}: expert ids {first}..{spec.n_routed_experts - 1} are zero-computation experts "
                "(identity experts: they return the token's input times its weight, with no expert compute)."
            )
        return notes


# Routers whose choice is a token-id table lookup, not a learned score.
HASH_ROUTERS = ("DeepseekV4HashRouter",)


def adapter_class(row: Family) -> type[TableAdapter]:
    """A `TableAdapter` subclass for one family row, with the class attributes the registry reads."""
    attrs: dict[str, Any] = {
        "row": row,
        "name": row.name,
        "model_types": row.model_types or (row.name,),
        "router_class_names": row.router_class_names,
        "family": row.family,
        "verified": row.verified,
        "router_path": row.router_path,
        "experts_path": row.experts_path,
        "layers_path": row.layers_path,
        "route_alone": row.route_alone,
        "selection_score_kind": row.score_kind
        or f"{row.selection} of the router logits{' plus its correction bias' if row.bias else ''}: what "
        "the router takes its top-k of",
        "__doc__": f"{row.family}: {row.rule}",
    }
    return type(f"{row.name.title().replace('_', '')}Adapter", (TableAdapter,), attrs)
