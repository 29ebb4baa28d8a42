"""The engine contract: texts in, routing arrays out. Engines know nothing of WordNet, Parquet or cards."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_build.errors import AtlasError


class ModelLoadError(AtlasError):
    """The model could not be loaded: missing path, corrupt checkpoint, offline hub id, ..."""


@dataclass
class RoutingBatch:
    """Routing of a batch of texts, tokens of all texts concatenated (T tokens in all).

    Attributes:
        token_counts: int64 `[texts]`, tokens per text (special tokens included, padding excluded).
        token_ids: int64 `[T]`.
        tokens: `[T]` token strings (`tokenizer.convert_ids_to_tokens`).
        char_spans: int32 `[T, 2]` character (start, end) of each token in its text; (-1, -1) for
            special tokens. Byte-level tokens that carry a leading space include it.
        experts: int16 `[T, moe_layers, top_k]` expert ids, ordered by gate weight, highest first
            (ordered by the float32 weight; ties keep the router's order).
        weights: float32 `[T, moe_layers, top_k]`, the gate weights the model multiplies each expert's
            output by (after normalisation and `routed_scaling_factor`), or None for id-only engines.
        score_experts: int16 `[T, moe_layers, M]`, the M experts of highest selection score (the score the
            router chooses on), highest first, ties to the lower id; None unless scores were asked for.
        scores: float32 `[T, moe_layers, M]`, those selection scores; None with `score_experts`.
        router_inputs: float32 `[T, n, D]`, the router's input vector at each of the n decoder layers asked
            for (`router_input_layers`, in that order), projected to D dimensions
            (`atlas_build.atlas.projection`, computed in float64); None unless router inputs were asked for.
    """

    token_counts: np.ndarray
    token_ids: np.ndarray
    tokens: list[str]
    char_spans: np.ndarray
    experts: np.ndarray
    weights: np.ndarray | None
    score_experts: np.ndarray | None = None
    scores: np.ndarray | None = None
    router_inputs: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.token_counts.sum())


class Engine(ABC):
    """Runs one MoE model over texts and returns its routing."""

    name: str
    # False for engines that return expert ids only (vLLM): the atlas's `weights` are then null.
    returns_weights: bool = True

    @abstractmethod
    def route(self, texts: list[str]) -> RoutingBatch:
        """Route `texts` (prefill only) and return the routing of every token of every text."""

    @abstractmethod
    def model_row(self) -> dict[str, Any]:
        """The model's `models` row (see `atlas.schema.MODELS_SCHEMA`), without `model_slug`."""

    @property
    @abstractmethod
    def tokenizer(self):
        """The model's tokenizer (a transformers tokenizer)."""

    def provenance(self) -> dict[str, Any]:
        """What produced the routing besides the checkpoint (library versions, device, dtype, attention and
        MoE implementation, CUDA graphs or eager, batching), for the build record and the card."""
        return {}

    def model_notes(self) -> list[str]:
        """Sentences for the dataset card about this model (what is verified, what is random-init)."""
        return []

    @property
    def max_length(self) -> int | None:
        """Longest text, in tokens, the engine routes (None: no limit known)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""
