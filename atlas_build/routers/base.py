"""Router adapters: where one architecture's router is, and how to read its choice.

An adapter knows one MoE architecture and nothing else. Adding an architecture is one file in this
folder, one line in `routers/__init__.py`, and a verification test that recomputes the gate
independently from the router's input.

transformers 5 routers (`*TopkRouter`, `*TopKRouter`) return `(router_logits, top_k_weights,
top_k_index)`; `top_k_weights` is what the MoE block multiplies each expert's output by. Routers that
return something else (Llama 4) override `read_router_output`.

Multimodal checkpoints (Llama 4, Qwen3.5-MoE) keep the text decoder's settings in `text_config`;
`AutoModelForCausalLM` loads only that decoder, so adapters read `decoder_config(config)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas_build.errors import AtlasError

# What tests/routers checks of every adapter, on a tiny random-init checkpoint built there with transformers.
VERIFIED_FOR_ALL = (
    "routing equals a float64 gate recomputed from the router input by the published rule "
    "(0 mismatched expert sets in a float32 run)",
    "padding does not change routing",
)


class UnsupportedModelError(AtlasError):
    """The model is dense, or its MoE architecture has no adapter."""


def decoder_config(config):
    """The text decoder's config: `text_config` of a multimodal wrapper, else `config` itself."""
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, ValueError):  # not a transformers config, or several text configs
        return config


@dataclass(frozen=True)
class RoutingSpec:
    """What an architecture's router does, read from the model config.

    `moe_layers` are decoder-layer indices, in the order of the routing rows' `experts` lists.
    """

    n_routed_experts: int
    top_k: int
    n_shared_experts: int
    scoring_func: str  # softmax | sigmoid
    topk_method: str  # greedy | group_limited_greedy | noaux_tc
    norm_topk_prob: bool
    routed_scaling_factor: float
    moe_layers: tuple[int, ...]
    n_group: int | None = None
    topk_group: int | None = None
    # Decoder layers (among moe_layers) whose experts are a token-id hash lookup, not a learned choice.
    hash_layers: tuple[int, ...] = ()
    # Zero-computation experts: the last n_zero_experts ids of n_routed_experts (LongCat-Flash).
    n_zero_experts: int = 0
    # learned / hash / dense per decoder-layer module, when the adapter knows it (else derived).
    # Not compared: derivable from moe_layers and hash_layers wherever the adapter does not fill it.
    layer_kinds: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def softmax_greedy(
        cls, n_routed_experts: int, top_k: int, norm_topk_prob: bool, moe_layers, n_shared_experts: int = 0
    ) -> RoutingSpec:
        """Plain softmax top-k routing (Mixtral, Qwen-MoE, OLMoE): no groups, no scaling."""
        return cls(
            n_routed_experts=n_routed_experts,
            top_k=top_k,
            n_shared_experts=n_shared_experts,
            scoring_func="softmax",
            topk_method="greedy",
            norm_topk_prob=bool(norm_topk_prob),
            routed_scaling_factor=1.0,
            moe_layers=tuple(moe_layers),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["moe_layers"] = list(self.moe_layers)
        out["hash_layers"] = list(self.hash_layers)
        out["layer_kinds"] = list(self.layer_kinds)
        return out

    def routing_kinds(self, num_hidden_layers: int) -> list[str]:
        """`learned` / `hash` / `dense` for every decoder layer (the models row's `routing_kind`)."""
        if self.layer_kinds:
            return list(self.layer_kinds)
        moe, hashed = set(self.moe_layers), set(self.hash_layers)
        return [
            "hash" if i in hashed else "learned" if i in moe else "dense" for i in range(num_hidden_layers)
        ]


class RouterAdapter(ABC):
    """Reads one architecture's routing.

    Subclasses set `name`, `model_types` (transformers `config.model_type` values),
    `router_class_names` (class names of the router modules), `family` (the released models it reads) and
    `verified` (what tests/routers checks of it beyond VERIFIED_FOR_ALL), and implement `routing_spec`.
    """

    name: str
    model_types: tuple[str, ...]
    router_class_names: tuple[str, ...]
    family: str = ""
    verified: tuple[str, ...] = ()  # checks beyond VERIFIED_FOR_ALL
    # Where the router sits inside a decoder layer, and where the decoder layers are.
    router_path: str = "mlp.gate"
    experts_path: str = "mlp.experts"
    layers_path: str = "model.layers"

    @abstractmethod
    def routing_spec(self, config) -> RoutingSpec:
        """The routing hyper-parameters and MoE layer indices of `config`."""

    def is_moe_layer(self, config, layer_idx: int) -> bool:
        return layer_idx in self.routing_spec(config).moe_layers

    @staticmethod
    def _get(module, dotted: str):
        for part in dotted.split("."):
            module = getattr(module, part)
        return module

    def decoder_layers(self, model) -> list:
        return list(self._get(model, self.layers_path))

    def decoder_model(self, model):
        """The module that owns the decoder layers (running it skips the LM head)."""
        owner, _, _ = self.layers_path.rpartition(".")
        return self._get(model, owner) if owner else model

    def card_notes(self, config) -> list[str]:
        """Sentences for the dataset card where this architecture's `weights` differ from the usual meaning
        (the factor each chosen expert's output is multiplied by)."""
        return []

    def router_modules(self, model) -> list[tuple[int, Any]]:
        """`(decoder layer index, router module)` for every MoE layer, in layer order.

        Raises UnsupportedModelError when the instantiated model disagrees with its config (a router
        class this adapter does not know, or a layer that should be MoE without a router).
        """
        spec = self.routing_spec(model.config)
        layers = self.decoder_layers(model)
        out = []
        for idx in spec.moe_layers:
            try:
                router = self._get(layers[idx], self.router_path)
            except (AttributeError, IndexError) as error:
                raise UnsupportedModelError(
                    f"{self.name}: decoder layer {idx} should be an MoE layer but has no {self.router_path}"
                ) from error
            if type(router).__name__ not in self.router_class_names:
                raise UnsupportedModelError(
                    f"{self.name}: layer {idx} router is {type(router).__name__}, expected one of "
                    f"{self.router_class_names} (transformers version mismatch?)"
                )
            out.append((idx, router))
        return out

    def read_router_output(self, output, router=None) -> tuple[Any, Any]:
        """Router forward output -> (top_k_index long `[tokens, k]`, top_k_weights `[tokens, k]`).

        The weights are those the MoE block multiplies the expert outputs by; order is the router's own.
        `router` is the module that produced `output` (for adapters that need its settings).
        """
        _, weights, index = output
        return index, weights

    # Why padding changes this family's routing in transformers (then the engine routes each text alone);
    # None: right padding leaves the routing of real tokens unchanged (tests/routers checks it).
    route_alone: str | None = None

    # What `selection_scores` returns, in words (for the dataset card); None: the adapter gives none.
    selection_score_kind: str | None = None

    @property
    def gives_selection_scores(self) -> bool:
        return type(self).selection_scores is not RouterAdapter.selection_scores

    def selection_scores(self, router, inputs, output):
        """Router forward `(module, inputs, output)` -> float32 `[tokens, N]`: the scores the router selects
        its top-k on, computed exactly as the router computes them (so that the model's own selection rule
        applied to them gives back its choice).

        The default refuses: an adapter without this method cannot serve `atlas build --scores`.
        """
        raise self._no_selection_scores()

    def require_selection_scores(self) -> None:
        """Refuse `--scores` up front (before loading weights) when this adapter gives no selection scores."""
        if not self.gives_selection_scores:
            raise self._no_selection_scores()

    def _no_selection_scores(self) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"router adapter {self.name!r} gives no selection scores: `atlas build --scores` is not available "
            "for this architecture (build without --scores, or add selection_scores to the adapter)"
        )

    def routed_expert_params(self, model, layer_idx: int) -> int:
        """Parameters of all routed experts of one MoE layer (for active-parameter counts)."""
        experts = self._get(self.decoder_layers(model)[layer_idx], self.experts_path)
        return sum(p.numel() for p in experts.parameters())
