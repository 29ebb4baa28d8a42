"""Routing paths across layers, from the dataset alone: transitions, path diversity, sense-pair agreement.

A token's *top-1 path* over a window of w consecutive MoE layers is the sequence of its first (highest
gate weight) experts in those layers; its *top-k path set* is the sequence of its top-k sets. Three
families of statistics, all vectorised over tokens (no per-token Python):

* transitions: P(e at layer l+d | e' at layer l) between top-1 experts, for d in `DISTANCES`, with the lift
  against a load-preserving shuffle (the rows of layer l+d permuted across tokens: both layers keep their
  loads, only the link between them breaks) and the mutual information I(l; l+d), observed and shuffled;
* diversity: distinct top-1 paths and top-k path sets per token id over windows of w layers, the
  conditional entropies H(path | token id) (and after shuffling token ids over rows), and on the sense
  corpus's target tokens H(path | token id) against H(path | token id, sense) with a permutation null
  (senses permuted among the occurrences of each target token id);
* agreement: the share of same- vs different-sense pairs whose target tokens follow the same top-1 path
  over a window of w layers (w = 1, 2, 4, all), Δ = same − different with lemma-clustered bootstrap CIs,
  within-lemma permutation p-values and controls (target token identity, context-word overlap, both, and a
  random-init null model).

Paths are compared through integer codes: exact (ids packed into 64 bits) when the window's ids fit,
otherwise a 64-bit hash (splitmix64), whose collisions (probability about n² 2^-64 among n paths) are
negligible at atlas sizes. Id-only engines (weights_dtype null) store each top-k as an unordered set: they
have no top-1, so their top-1 statistics are null and only the top-k path sets are reported.

The statistics live by role: `arrays` (codes, layer-major arrays, windows), `transitions`, `diversity`
(with the sense entropy gain) and `agreement`; this module gathers them per model and runs them in a
forked worker on large atlases.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas_build.atlas.schema import SENSES
from atlas_build.metrics.estimators.identity import target_identity
from atlas_build.metrics.paths.agreement import agreement, context_strata, stratified_delta, target_rows
from atlas_build.metrics.paths.arrays import (
    MAX_SET_WINDOW_STARTS,
    MAX_WINDOW_STARTS,
    layer_set_codes,
    mix64,
    top_columns,
    widths,
    window_codes,
    window_starts,
)
from atlas_build.metrics.paths.diversity import diversity, sense_entropy
from atlas_build.metrics.paths.transitions import MAX_DISTANT_PAIRS, transitions

__all__ = [
    "FORMULAS",
    "PathMetricsJob",
    "agreement",
    "context_strata",
    "diversity",
    "layer_set_codes",
    "mix64",
    "path_metrics",
    "sense_entropy",
    "stratified_delta",
    "target_rows",
    "top_columns",
    "transitions",
    "window_codes",
    "window_starts",
]

FORMULAS = {
    "path_top1": "top-1 expert of a token at a layer = its chosen expert of highest gate weight (the "
    "weight-ordered first slot; Llama 4: the gate weight sigmoid(logit) multiplies the expert's input, not "
    "its output, and is still what orders the slots); id-only engines have no top-1 (top-k path sets only)",
    "path_transitions": "P(e at l+d | e' at l) = C[e', e] / C[e', ·] over tokens, C = top-1 transition "
    "counts; lift = C[e', e] · T / (C[e', ·] C[·, e]) (1 = the load-preserving shuffle's expectation); "
    "max_lift and the top transitions: over the cells with observed count C[e', e] ≥ m and expected count "
    "C[e', ·] C[·, e] / T ≥ m (m = --min-count); d = 1: every adjacent pair, d > 1: ≤ "
    f"{MAX_DISTANT_PAIRS} evenly spaced pairs; "
    "I(l; l+d) = Σ C/T log2(lift) bits, shuffled: the same after permuting layer l+d's rows (seeded)",
    "path_diversity": "one population: the occurrences of the token ids with ≥ m occurrences (m = "
    "--min-count; rarer ids are left out of observed and shuffled alike); per such token id: distinct top-1 "
    "paths (top-k path sets) over a window of w MoE layers / its occurrences, averaged over the ids; "
    "H(path | token id) = H(token, path) − H(token) over the same occurrences, plug-in, bits; shuffled: the "
    "token ids permuted over the population's occurrences (every id keeps its count, every occurrence its "
    f"path); windows of w layers at ≤ {MAX_WINDOW_STARTS} evenly spaced starts (top-k path sets: ≤ "
    f"{MAX_SET_WINDOW_STARTS}, no all-layer window), averaged",
    "path_sense_entropy": "on target tokens: gain = H(path | token id) − H(path | token id, sense) bits, "
    "averaged over window starts; null: senses permuted among the targets of each token id (R ≤ 199), "
    "p = (1 + #{gain* ≥ gain}) / (R + 1)",
    "path_agreement": "agree_p(w, s) = [top-1 experts of the two targets equal in layers s..s+w−1] (target: "
    "the first or last sub-token; --target all uses the last); "
    "Δ = mean over same-sense pairs − mean over different-sense pairs, averaged over window starts s; "
    "controls: Cochran–Mantel–Haenszel-weighted Δ within strata (token_identity: the 16 cells of same target "
    "token ids / surface form / left / right neighbour; "
    "context_words: context Jaccard 0 / below / above the median of J > 0; all: both), null_model: Δ(model) "
    "− Δ(random-init twin) on the pairs both routed; CIs: lemma-clustered bootstrap; p: within-lemma sense "
    "permutations (R ≤ 199)",
}


# ---- everything --------------------------------------------------------------------------------------


def path_metrics(
    routing: pa.Table,
    row: dict,
    corpus=None,
    *,
    options=None,
    target: str = "last",
    min_count: int = 5,
    null_routing: pa.Table | None = None,
    null_row: dict | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Every path statistic of one model (the `models[slug].paths` block) and its arrays for the `.npz`.

    Args:
        routing: the model's routing rows (`source_id`, `corpus`, `token_index`, `token_id`, `is_target`,
            `experts`).
        row: its `models` row.
        corpus: the `SenseCorpus`, or None (no sense statistics).
        options: `BootstrapOptions` (resamples, permutations, confidence, seed).
        null_routing, null_row: a random-init null model for the agreement control, or None.
    """
    n_experts, moe_layers = row["n_routed_experts"], list(row["moe_layers"])
    n_layers = len(moe_layers)
    has_top1 = row.get("weights_dtype") is not None
    column = routing.column("experts")
    seed = options.seed if options is not None else 0
    top1 = top_columns(column, n_layers) if has_top1 else None  # [L, T]
    token_ids = routing.column("token_id").to_numpy()
    # Top-k set codes for the layers of the sampled windows (the all-layer window uses top-1 only).
    set_layers = sorted(
        {
            x
            for name, w in widths(n_layers)
            if name != "all"
            for s in window_starts(n_layers, w, MAX_SET_WINDOW_STARTS)
            for x in range(s, s + w)
        }
    )
    sets = layer_set_codes(column, set_layers, n_experts, seed + 5) if set_layers else None
    out: dict = {
        "basis": "top-1 paths and top-k path sets"
        if has_top1
        else "top-k path sets only (no top-1: id-only engine)",
        "transitions": None,
        "diversity": diversity(top1, sets, set_layers, token_ids, n_experts, min_count, seed, n_layers),
        "sense_entropy": None,
        "agreement": None,
    }
    arrays: dict[str, np.ndarray] = {}
    if has_top1:
        out["transitions"], adjacent = transitions(top1, n_experts, moe_layers, min_count, seed + 7)
        arrays["path_transition_counts"] = adjacent
    if corpus is not None and has_top1 and options is not None:
        rows = target_rows(routing, SENSES, corpus.example_ids, target)
        present = rows >= 0
        target_token = np.where(present, token_ids[np.maximum(rows, 0)], -1)
        target_top1 = np.zeros((len(rows), n_layers), dtype=top1.dtype)
        target_top1[present] = top1[:, rows[present]].T
        out["target"] = "last" if target == "all" else target
        out["sense_entropy"] = sense_entropy(
            target_top1[present],
            target_token[present],
            corpus.synset[present],
            n_experts,
            options.n_permutations,
            seed,
        )
        null_top1 = None
        if null_routing is not None and null_row is not None and null_row.get("weights_dtype") is not None:
            null_rows = target_rows(null_routing, SENSES, corpus.example_ids, target)
            null_top1 = np.full((len(null_rows), len(null_row["moe_layers"])), -1, dtype=np.int64)
            ok = null_rows >= 0
            null_top1[ok] = top_columns(
                null_routing.column("experts"), len(null_row["moe_layers"]), rows=null_rows[ok]
            ).T
        cells = target_identity(routing, corpus.example_ids, corpus.form).pair_cells(
            corpus.pair_a, corpus.pair_b
        )
        out["agreement"] = agreement(
            target_top1.astype(np.int64),
            target_token,
            corpus,
            options,
            moe_layers,
            null_top1,
            null_row["model_slug"] if null_row else None,
            identity_cells=cells,
        )
    return out, arrays


# What a forked path worker reads: set just before the fork, inherited (memory-mapped Arrow, not copied).
_SHARED: dict = {}
# Below this many routing entries the paths run in-process at `result()`: forking costs more than it saves.
PARALLEL_MIN_ENTRIES = 1 << 24


def _run_shared() -> tuple[dict, dict[str, np.ndarray]]:
    args, kwargs = _SHARED["args"], _SHARED["kwargs"]
    return path_metrics(*args, **kwargs)


class PathMetricsJob:
    """`path_metrics` in one forked worker (large atlases), so that it runs while the caller computes the
    sense metrics; small atlases run in-process at `result()`. Arguments as `path_metrics`."""

    def __init__(self, *args, workers: int | None = None, **kwargs):
        import multiprocessing

        routing, row = args[0], args[1]
        self.args, self.kwargs = args, kwargs
        entries = routing.num_rows * len(row["moe_layers"]) * row["top_k"]
        parallel = workers if workers is not None else int(entries >= PARALLEL_MIN_ENTRIES)
        self._pool = self._async = None
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            _SHARED.update(args=args, kwargs=kwargs)
            try:  # the worker forks here and inherits `_SHARED`
                self._pool = multiprocessing.get_context("fork").Pool(1)
            finally:
                _SHARED.clear()
            self._async = self._pool.apply_async(_run_shared)

    def result(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._async is None:
            return path_metrics(*self.args, **self.kwargs)
        try:
            return self._async.get()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (idempotent); `result()` calls it."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
