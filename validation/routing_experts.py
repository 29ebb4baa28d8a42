"""The expert and weight checks of a routing config (experts-top-k, experts-in-range, weights-*) and the
per-layer degeneracy check (routing-not-degenerate): `ExpertChecks`, mixed into `RoutingValidator`
(validation/routing.py), which streams the batches and calls them on each, so the files are still read once.

The state they use (`n_experts`, `top_k`, `scale`, `rtol`, the per-layer counts ...) is the validator's,
set up in its `__init__`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atlas_build.atlas.routing import routing_array
from validation import expectations as ex
from validation.ledger import Outcome
from validation.rules import MIN_TOKENS_FOR_DEGENERACY

# float16 -> float32 by table lookup: several times faster than numpy's float16 cast.
_HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def _planes(values: np.ndarray) -> np.ndarray:
    """`[n, L, k]` -> contiguous `[k, n, L]`: rules over the k entries become operations on whole planes."""
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def _float_planes(weights: np.ndarray) -> np.ndarray:
    """Weights `[n, L, k]` -> float32 planes `[k, n, L]` (float16 through a lookup table)."""
    if weights.dtype == np.float16:
        return np.take(_HALF_TO_FLOAT, weights.view(np.uint16).transpose(2, 0, 1))
    return _planes(weights.astype(np.float32, copy=False))


def _distinct_per_layer(planes: np.ndarray) -> np.ndarray:
    """Distinct ids per token-layer from `[k, n, L]` planes: k minus the entries equal to an earlier one."""
    k = planes.shape[0]
    shape = planes.shape[1:]
    if k <= 1:
        return np.full(shape, k, dtype=np.uint8)
    if k > 16:  # pairwise comparisons grow as k^2: sort instead
        ordered = np.sort(planes, axis=0)
        return 1 + (ordered[1:] != ordered[:-1]).sum(axis=0)
    repeats = np.zeros(shape, dtype=np.uint8)  # k <= 16: small, and it is kept for failing examples
    seen = np.empty(shape, dtype=bool)
    same = np.empty(shape, dtype=bool)
    for j in range(1, k):
        np.equal(planes[0], planes[j], out=seen)
        for i in range(1, j):
            np.equal(planes[i], planes[j], out=same)
            seen |= same
        repeats += seen
    return np.uint8(k) - repeats


def _first_layer(mask: np.ndarray) -> int:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else 0


class ExpertChecks:
    """The experts/weights rules of one batch and the per-layer summary at the end (see the module)."""

    def _experts_and_weights(self, col: dict, n: int, frame: dict, explain: dict) -> None:
        experts = routing_array(col["experts"])
        layers, k = experts.shape[1], experts.shape[2]
        planes = _planes(experts)
        distinct = _distinct_per_layer(planes)
        if experts.dtype.kind == "i":  # only a drifted, signed id type can hold negatives
            planes = planes.astype(np.int64)
        top = planes.max(axis=0) if k else np.zeros((n, layers), dtype=np.int64)
        low = planes.min(axis=0) if k else np.zeros((n, layers), dtype=np.int64)
        frame["moe_layers_in_row"] = np.full(n, layers, dtype=np.int64)
        frame["top_k_in_row"] = np.full(n, k, dtype=np.int64)
        frame["distinct_experts_min"] = (
            distinct.min(axis=1).astype(np.int64) if layers else np.zeros(n, dtype=np.int64)
        )
        frame["expert_max"] = top.max(axis=1).astype(np.int64) if layers else np.zeros(n, np.int64)
        frame["expert_min"] = low.min(axis=1).astype(np.int64) if layers else np.zeros(n, np.int64)
        moe = self.layer_ids

        def layer_name(layer: int) -> str:
            return f"decoder layer {moe[layer]}" if layer < len(moe) else f"moe layer #{layer}"

        def dist(i):
            layer = int(np.argmin(distinct[i]))
            return (
                f"{layer_name(layer)}: experts {experts[i, layer].tolist()} "
                f"({distinct[i, layer]} distinct, top_k {self.top_k})"
            )

        def out_of_range(i):
            layer = _first_layer((low[i] < 0) | (top[i] >= self.n_experts))
            ids = experts[i, layer].tolist()
            return f"{layer_name(layer)}: experts {ids} (n_routed_experts {self.n_experts})"

        shape = f"experts shape [{layers}][{k}], models row says [{self.n_layers}][{self.top_k}]"
        explain.update(
            distinct_experts_min=dist,
            expert_max=out_of_range,
            expert_min=out_of_range,
            moe_layers_in_row=lambda i: shape,
            top_k_in_row=lambda i: shape,
        )
        # Per-layer expert counts for the degeneracy check (only with the declared shape).
        if layers == self.n_layers and k == self.top_k:
            in_range = bool((low >= 0).all() and (top < self.n_experts).all())
            for layer in range(layers):
                ids = experts[:, layer, :]
                if not in_range:
                    ids = ids.astype(np.int64)
                    ids = np.where((ids >= 0) & (ids < self.n_experts), ids, self.n_experts)
                counts = np.bincount(ids.ravel(), minlength=self.n_experts + 1)
                self._layer_counts[layer] += counts[: self.n_experts]
            self._zero_ids += ((top == 0) & (low == 0)).sum(axis=0)
            self._layer_tokens += n

        weights_col = col["weights"]
        null = weights_col.is_null().to_numpy(zero_copy_only=False)
        frame["weights_null"] = null
        explain["weights_null"] = lambda i: (
            f"weights {'null' if null[i] else 'present'}, weights_dtype={self.weights_dtype!r}"
        )
        if self.weights_dtype is None:
            return
        zeros = np.zeros(n, dtype=np.int64)
        if null.all():
            frame.update(weights_nonfinite=zeros, weights_negative=zeros, weights_unsorted_layers=zeros)
            frame["weights_sum_error"] = np.full(n, np.nan)
            return
        weights = routing_array(weights_col)  # null rows read back as NaN
        w = _float_planes(weights)  # [k, n, L] float32
        wk = w.shape[0]
        sums = w.sum(axis=0)
        least = w.min(axis=0) if wk else np.zeros_like(sums)
        nonfinite_layers = ~np.isfinite(sums)  # NaN or inf anywhere in the layer
        nonfinite_layers[null] = False  # the weights-null check reports null rows
        negative_layers = least < 0
        increasing = np.zeros(sums.shape, dtype=bool)
        for j in range(1, wk):
            increasing |= w[j] > w[j - 1]
        if self.norm:
            deviation = np.abs(sums / self.scale - 1.0)
        elif self.scoring == "softmax":
            deviation = np.maximum(sums / self.scale - 1.0, 0.0)
        else:  # sigmoid without renormalisation: each weight is at most the scale
            deviation = np.maximum(w.max(axis=0) / self.scale - 1.0, 0.0)
        error = deviation.max(axis=1) if deviation.shape[1] else np.zeros(n)
        nonfinite = nonfinite_layers.sum(axis=1)
        error = np.where(null | (nonfinite > 0), np.nan, error)  # not applicable: reported by other checks
        frame.update(
            weights_nonfinite=nonfinite,
            weights_negative=negative_layers.sum(axis=1),
            weights_unsorted_layers=increasing.sum(axis=1),
            weights_sum_error=error,
        )

        def weights_of(i, mask):
            layer = _first_layer(mask)
            return f"{layer_name(layer)}: weights {[round(float(v), 5) for v in weights[i, layer]]}"

        explain.update(
            weights_nonfinite=lambda i: weights_of(i, nonfinite_layers[i]),
            weights_negative=lambda i: weights_of(i, negative_layers[i]),
            weights_unsorted_layers=lambda i: weights_of(i, increasing[i]),
            weights_sum_error=lambda i: (
                weights_of(i, deviation[i] == deviation[i].max())
                + f" sum {float(sums[i, int(np.argmax(deviation[i]))]):.5f}, scale {self.scale}, "
                f"norm_topk_prob {self.norm}, rtol {self.rtol}"
            ),
        )
        if weights.shape[1] == self.n_layers and weights.shape[2] == self.top_k:
            all_zero = (sums == 0) & (least == 0)
            self._zero_weights += (all_zero & ~null[:, None]).sum(axis=0)
            self._weighted_tokens += int((~null).sum())

    def _finish_layers(self) -> None:
        if self.model is None:
            return
        config = self.config
        if self._layer_tokens < MIN_TOKENS_FOR_DEGENERACY:
            self.ledger.skip(
                config,
                "routing-not-degenerate",
                f"{self._layer_tokens} tokens with the declared shape; needs {MIN_TOKENS_FOR_DEGENERACY}",
            )
            return
        tokens = self._layer_tokens
        top = self._layer_counts.argmax(axis=1)
        share = self._layer_counts.max(axis=1) / tokens
        weighted = self._weighted_tokens
        frame = pd.DataFrame(
            {
                "top_expert_share": share,
                "all_zero_ids_share": self._zero_ids / tokens,
                "all_zero_weights_share": self._zero_weights / weighted
                if weighted
                else np.full(self.n_layers, np.nan),
            },
            index=pd.RangeIndex(self.n_layers),
        )
        suite = self.gx.add_suite(
            f"{config}-layers",
            [
                ("routing-not-degenerate", ex.ExpectNoDominantExpert()),
                ("routing-not-degenerate", ex.ExpectNoAllZeroLayer()),
                ("routing-not-degenerate", ex.ExpectNoAllZeroLayer(column="all_zero_weights_share")),
            ],
        )

        def describe(pos: int, outcome: Outcome) -> str:
            layer = self.layer_ids[pos]
            if outcome.column == "top_expert_share":
                return f"decoder layer {layer}: expert {int(top[pos])} is in the top-k of all {tokens} tokens"
            what = "expert ids" if outcome.column == "all_zero_ids_share" else "weights"
            return f"decoder layer {layer}: every token's {what} are all zero"

        self.ledger.add_outcomes(config, self.gx.validate(suite, frame), describe)
        self.ledger.declare(
            config, "routing-not-degenerate", tokens=tokens, max_top_expert_share=float(share.max())
        )
