"""Per-layer metrics over every routed token: expert load, routing entropy, co-activation, token-id
specialisation, and (when the atlas has reasoning traces) marker/expert nPMI and segment distributions.

One pass over the routing column per block of layers: a block is the `[layers, k, T]` transpose of the
`experts` buffer (built chunk by chunk from the Arrow column, within a memory budget), so each layer's
`[k, T]` slab is contiguous and every metric is a few `np.bincount` calls over it. Nothing loops per token.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.routing import routing_array

# Tokens per slice of the per-layer kernel: bounds its `[k(k-1)/2, slice]` intp code buffer.
COACT_SLICE = 1 << 18


def layer_blocks(
    column: pa.ChunkedArray | pa.Array,
    n_layers: int,
    top_k: int,
    budget_bytes: int = 1 << 30,
    layers: range | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(first_layer, block)` with `block` the `[layers, k, T]` expert ids of a group of layers.

    Groups hold as many of `layers` (default: all) as fit in `budget_bytes`.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n_tokens = sum(len(c) for c in chunks)
    dtype = np.dtype(column.type.value_type.value_type.to_pandas_dtype())
    layers = layers if layers is not None else range(n_layers)
    per_layer = max(1, top_k * n_tokens * dtype.itemsize)
    group = int(max(1, min(len(layers), budget_bytes // per_layer)))
    for first in range(layers.start, layers.stop, group):
        last = min(layers.stop, first + group)
        block = np.empty((last - first, top_k, n_tokens), dtype=dtype)
        at = 0
        for chunk in chunks:
            if not len(chunk):
                continue
            arr = routing_array(chunk)
            block[:, :, at : at + len(arr)] = arr[:, first:last, :].transpose(1, 2, 0)
            at += len(arr)
        yield first, block


def load_counts(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """Top-k slots per expert, `[N]`, from one layer's `[k, T]` ids (an expert appears once per top-k)."""
    return np.bincount(experts.ravel(), minlength=n_experts)


def normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """H = −Σ_e p_e log p_e / log N, p_e = load share of expert e (last axis); 1 = perfectly balanced."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / counts.sum(axis=-1, keepdims=True)
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(n) if n > 1 else np.zeros_like(h)


def conditional_coactivation(counts: np.ndarray) -> np.ndarray:
    """P(E_j | E_i) = C_ij / C_ii (row i; NaN for experts never chosen); last two axes are `[N, N]`."""
    diag = np.diagonal(counts, axis1=-2, axis2=-1)[..., :, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diag > 0, counts / diag, np.nan)


@dataclass
class TokenRanks:
    """Every token id as a dense rank, the ids with at least `min_count` occurrences, and a shuffle."""

    rank: np.ndarray  # [T] rank of the token's id
    shuffled: np.ndarray  # [T] rank after permuting the token rows (the shuffled baseline; -1: not eligible)
    occurrences: np.ndarray  # [V] occurrences of each token id (all ids, singletons included)
    min_count: int
    eligible: np.ndarray  # [V] bool: occurrences >= min_count (the project's definition averages these)


def token_ranks(token_ids: np.ndarray, min_count: int, rng: np.random.Generator) -> TokenRanks:
    """Rank every token id (OLMoE's definition averages them all); `eligible` marks the frequent ones;
    `shuffled` permutes the ranks over token rows (seeded).

    Permuting which row carries which token id is the same as permuting the expert rows across tokens:
    it keeps every expert's load and every token's count, and breaks only the token -> expert link. One
    permutation serves all layers (each layer's baseline is a valid draw on its own).
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    if not len(ids):
        empty = np.zeros(0, np.int64)
        return TokenRanks(empty, empty, empty, min_count, np.zeros(0, bool))
    counts = np.bincount(ids - ids.min())
    seen = counts > 0
    rank = (np.cumsum(seen) - 1)[ids - ids.min()]
    occurrences = counts[seen]
    eligible = occurrences >= max(1, min_count)
    shuffled = rank[rng.permutation(len(rank))]
    # The shuffled baseline is averaged over the eligible ids only: rows of the others are not counted.
    shuffled = np.where(eligible[shuffled], shuffled, -1)
    return TokenRanks(rank, shuffled, occurrences, min_count, eligible)


# Cells of one token x expert count table (int64): token ids are counted in blocks that fit in L2 cache.
BLOCK_CELLS = 1 << 17


@dataclass
class _Ranking:
    """Token rows of one ranking (real or shuffled) sorted by rank, cut into blocks of `rows` token ids."""

    order: np.ndarray  # [n] token rows with rank >= 0, by rank
    base: np.ndarray  # [n] (rank mod rows) * N: the row of the token inside its block's table
    bounds: np.ndarray  # [blocks + 1] positions in `order` where the blocks start
    rows: int


class LayerKernel:
    """Per-layer counts over all T tokens with preallocated buffers (no per-layer allocation churn).

    For one layer's `[k, T]` ids:
      * co-activation C `[N, N]`: histogram of the codes `e_a * N + e_b` over the k(k−1)/2 slot pairs
        a < b of every token (both orders added), load on the diagonal; the rank-adjacent pairs (b = a + 1)
        come first in the code buffer, so their histogram (OLMoE's co-activation) costs no extra pass;
      * token x expert counts for the token-id specialisation: the token rows are sorted by token rank
        once, so a block of token ids is a contiguous run whose `rank * N + e` histogram fits in cache.
    """

    def __init__(
        self, n_tokens: int, n_experts: int, top_k: int, ranks: TokenRanks | None, slice_tokens: int
    ):
        self.n_experts, self.top_k = n_experts, top_k
        self.slice = max(1, min(slice_tokens, n_tokens))
        pairs = list(zip(*np.triu_indices(top_k, 1), strict=True))
        self.pairs = sorted(pairs, key=lambda ab: ab[1] - ab[0] != 1)  # rank-adjacent pairs first
        self.n_adjacent = max(0, top_k - 1)
        self.ids = np.empty(top_k * self.slice, dtype=np.intp)
        self.scaled = np.empty(top_k * self.slice, dtype=np.intp)
        self.codes = np.empty(max(top_k, len(self.pairs)) * self.slice, dtype=np.intp)
        self.ranks = ranks
        if ranks is not None:
            rows = max(1, BLOCK_CELLS // n_experts)
            self.rankings = [
                self._ranking(r, len(ranks.occurrences), rows) for r in (ranks.rank, ranks.shuffled)
            ]

    def _ranking(self, rank: np.ndarray, n_ranked: int, rows: int) -> _Ranking:
        order = np.argsort(rank, kind="stable")
        order = order[np.searchsorted(rank[order], 0) :]  # drop the rare tokens (rank -1)
        sorted_rank = rank[order]
        bounds = np.searchsorted(sorted_rank, np.arange(0, n_ranked + rows, rows))
        bounds[-1] = len(order)
        base = ((sorted_rank % rows) * self.n_experts).astype(np.intp)
        return _Ranking(order.astype(np.intp), base, bounds, rows)

    def _load_slice(self, experts: np.ndarray, lo: int, hi: int) -> np.ndarray:
        ids = self.ids[: self.top_k * (hi - lo)].reshape(self.top_k, hi - lo)
        np.copyto(ids, experts[:, lo:hi], casting="unsafe")
        return ids

    def coactivation(self, experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(C `[N, N]` over all slot pairs, load on the diagonal; C_adj `[N, N]` over rank-adjacent slots)."""
        n, cells = self.n_experts, self.n_experts * self.n_experts
        flat = np.zeros(cells, dtype=np.int64)
        adjacent = np.zeros(cells, dtype=np.int64)
        diag = np.zeros(n, dtype=np.int64)
        for lo in range(0, experts.shape[1], self.slice):
            hi = min(experts.shape[1], lo + self.slice)
            ids = self._load_slice(experts, lo, hi)
            diag += np.bincount(ids.ravel(), minlength=n)
            if not self.pairs:
                continue
            scaled = self.scaled[: ids.size].reshape(ids.shape)
            np.multiply(ids, n, out=scaled)
            codes = self.codes[: len(self.pairs) * (hi - lo)].reshape(len(self.pairs), hi - lo)
            for p, (a, b) in enumerate(self.pairs):
                np.add(scaled[a], ids[b], out=codes[p])
            adj = np.bincount(codes[: self.n_adjacent].ravel(), minlength=cells)
            adjacent += adj
            flat += adj
            if len(self.pairs) > self.n_adjacent:
                flat += np.bincount(codes[self.n_adjacent :].ravel(), minlength=cells)
        counts = flat.reshape(n, n)
        counts = counts + counts.T
        counts[np.diag_indices(n)] = diag
        adjacent = adjacent.reshape(n, n)
        adjacent = adjacent + adjacent.T
        adjacent[np.diag_indices(n)] = diag
        return counts, adjacent

    def _best(self, experts: np.ndarray, ranking: _Ranking) -> tuple[np.ndarray, np.ndarray]:
        """Per ranked token: max over experts of its top-1 count and of its top-k count."""
        n, n_ranked = self.n_experts, len(self.ranks.occurrences)
        cells = ranking.rows * n
        best1 = np.zeros(len(ranking.bounds) * ranking.rows, dtype=np.int64)
        bestk = np.zeros_like(best1)
        by_rank = np.take(experts, ranking.order, axis=1)  # [k, n] token rows in rank order
        for b in range(len(ranking.bounds) - 1):
            lo, hi = ranking.bounds[b], ranking.bounds[b + 1]
            if hi == lo:
                continue
            table_1 = np.zeros(cells, dtype=np.int64)
            table_k = np.zeros(cells, dtype=np.int64)
            for s in range(lo, hi, self.slice):
                e = min(hi, s + self.slice)
                codes = self.codes[: self.top_k * (e - s)].reshape(self.top_k, e - s)
                np.add(by_rank[:, s:e], ranking.base[s:e], out=codes)
                table_k += np.bincount(codes.ravel(), minlength=cells)
                table_1 += np.bincount(codes[0], minlength=cells)
            rows = slice(b * ranking.rows, (b + 1) * ranking.rows)
            best1[rows] = table_1.reshape(ranking.rows, n).max(axis=1)
            bestk[rows] = table_k.reshape(ranking.rows, n).max(axis=1)
        return best1[:n_ranked], bestk[:n_ranked]

    def token_tables(self, experts: np.ndarray) -> dict[str, float]:
        """Shares as in `token_specialisation` (token ids with ≥ m occurrences), for the real and the
        shuffled token rows, and OLMoE's (`olmoe_top1`, `olmoe_topk`: every token id, singletons included)."""
        names = ("top1", "topk", "top1_shuffled", "topk_shuffled", "olmoe_top1", "olmoe_topk")
        eligible = self.ranks.eligible
        if not len(self.ranks.occurrences):
            return {name: float("nan") for name in names}
        occurrences = np.maximum(self.ranks.occurrences, 1)
        out = {}
        for suffix, ranking in zip(("", "_shuffled"), self.rankings, strict=True):
            best1, bestk = self._best(experts, ranking)
            share1, sharek = best1 / occurrences, bestk / occurrences
            nan = float("nan")
            out["top1" + suffix] = float(share1[eligible].mean()) if eligible.any() else nan
            out["topk" + suffix] = float(sharek[eligible].mean()) if eligible.any() else nan
            if not suffix:
                out["olmoe_top1"], out["olmoe_topk"] = float(share1.mean()), float(sharek.mean())
        return out


def coactivation_counts(experts: np.ndarray, n_experts: int, slice_tokens: int = COACT_SLICE) -> np.ndarray:
    """C `[N, N]`: C_ij = #tokens whose top-k holds both i and j (i ≠ j); C_ii = #tokens holding i.

    From one layer's `[k, T]` ids (see `LayerKernel`).
    """
    kernel = LayerKernel(experts.shape[1], n_experts, experts.shape[0], None, slice_tokens)
    return kernel.coactivation(experts)[0]


def adjacent_coactivation_counts(
    experts: np.ndarray, n_experts: int, slice_tokens: int = COACT_SLICE
) -> np.ndarray:
    """C_adj `[N, N]`: tokens whose weight-ordered top-k holds i and j in neighbouring ranks (OLMoE's
    co-activation); C_ii = #tokens holding i. From one layer's `[k, T]` ids, highest weight first."""
    kernel = LayerKernel(experts.shape[1], n_experts, experts.shape[0], None, slice_tokens)
    return kernel.coactivation(experts)[1]


def token_specialisation(
    experts: np.ndarray, ranks: TokenRanks, n_experts: int, slice_tokens: int = 1 << 20
) -> dict[str, float]:
    """Share of a token id's occurrences that go to its most frequent expert, averaged over token ids.

    For each token id t with n_t ≥ m occurrences (one layer, `[k, T]` ids):
        top-1:  s1(t) = max_e #{occurrences whose first (highest-weight) expert is e} / n_t
        top-k:  sk(t) = max_e #{occurrences whose top-k contains e} / n_t
    reported as the mean over token ids. Baselines: 1/N and k/N (uniform routing), and the same shares
    after permuting expert rows across tokens (same loads, same n_t): small n_t inflates the share, and the
    shuffled baseline has the same inflation.
    """
    kernel = LayerKernel(experts.shape[1], n_experts, experts.shape[0], ranks, slice_tokens)
    return kernel.token_tables(experts)


def npmi(joint: np.ndarray, marginal_x: np.ndarray, marginal_y: np.ndarray, total: float) -> np.ndarray:
    """nPMI(x, y) = log(p(x,y) / (p(x) p(y))) / −log p(x,y); −1 when x and y never co-occur, 1 when they
    always do (p(x,y) = p(x) = p(y)); counts broadcast against each other."""
    joint = np.asarray(joint, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_xy = joint / total
        pmi = np.log(p_xy) - np.log(np.asarray(marginal_x) / total) - np.log(np.asarray(marginal_y) / total)
        out = pmi / -np.log(p_xy)
    out = np.where(joint <= 0, -1.0, out)
    # p(x,y) = 1: x and y are on every token; the limit of nPMI is 1.
    return np.where(p_xy >= 1, 1.0, out)


@dataclass
class TraceRows:
    rows: np.ndarray  # [T_traces] routing rows of corpus "traces"
    marker: np.ndarray  # [T_traces] marker code or -1
    marker_names: list[str]
    segment: np.ndarray  # [T_traces] segment code or -1
    segment_names: list[str]


def _codes_with_null(array: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = pc.dictionary_encode(array)
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    return codes, [str(v) for v in encoded.dictionary.to_pylist()]


def trace_rows(routing: pa.Table) -> TraceRows | None:
    mask = pc.equal(routing.column("corpus"), "traces")
    rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    if not len(rows):
        return None
    sub = routing.select(["marker", "segment"]).take(pa.array(rows))
    marker, marker_names = _codes_with_null(sub.column("marker"))
    segment, segment_names = _codes_with_null(sub.column("segment"))
    return TraceRows(rows, marker, marker_names, segment, segment_names)


@dataclass
class TraceCounts:
    """Per layer: expert counts over trace tokens, over marker tokens, per marker, per segment."""

    experts: np.ndarray  # [L, N]
    marker_any: np.ndarray  # [L, N]
    per_marker: np.ndarray  # [L, M, N]
    per_segment: np.ndarray  # [L, S, N]


def trace_layer_counts(experts: np.ndarray, traces: TraceRows, n_experts: int) -> tuple[np.ndarray, ...]:
    """One layer's `[k, T]` ids -> counts of trace tokens holding each expert (all, marker, per marker, per
    segment)."""
    e = experts[:, traces.rows].astype(np.intp)
    n_markers, n_segments = len(traces.marker_names), len(traces.segment_names)
    all_ = np.bincount(e.ravel(), minlength=n_experts)
    marked = traces.marker >= 0
    any_marker = np.bincount(e[:, marked].ravel(), minlength=n_experts)
    per_marker = np.bincount(
        (traces.marker[marked][None, :] * n_experts + e[:, marked]).ravel(), minlength=n_markers * n_experts
    ).reshape(n_markers, n_experts)
    seg = traces.segment >= 0
    per_segment = np.bincount(
        (traces.segment[seg][None, :] * n_experts + e[:, seg]).ravel(), minlength=n_segments * n_experts
    ).reshape(n_segments, n_experts)
    return all_, any_marker, per_marker, per_segment


@dataclass
class ExpertPass:
    load: np.ndarray  # [L, N] top-k slots per expert
    coactivation: np.ndarray  # [L, N, N]
    adjacent: np.ndarray | None  # [L, N, N] rank-adjacent co-activation (OLMoE's), load on the diagonal
    specialisation: list[dict[str, float]]  # per layer
    ranks: TokenRanks
    traces: TraceRows | None
    trace_counts: TraceCounts | None
    n_tokens: int


# Below this many routing entries the pass runs in-process: forking costs more than it saves.
PARALLEL_MIN_ENTRIES = 1 << 24
# What forked workers read: set just before the pool forks, inherited (memory-mapped Arrow, not copied).
_SHARED: dict = {}


def _pass_layers(layers: range, shared: dict | None = None) -> dict:
    """The per-layer counts of `layers` (in-process, or in a forked worker reading `_SHARED`)."""
    sh = shared if shared is not None else _SHARED
    n_experts, ranks, traces, what = sh["n_experts"], sh["ranks"], sh["traces"], sh["what"]
    n = len(layers)
    out: dict = {
        "load": np.zeros((n, n_experts), dtype=np.int64),
        "coact": np.zeros((n, n_experts, n_experts), dtype=np.int64) if "coactivation" in what else None,
        "adjacent": np.zeros((n, n_experts, n_experts), dtype=np.int64) if "coactivation" in what else None,
        "special": [],
        "trace": [],
    }
    kernel = LayerKernel(sh["n_tokens"], n_experts, sh["top_k"], ranks, sh["slice_tokens"])
    blocks = layer_blocks(sh["column"], sh["n_layers"], sh["top_k"], sh["budget_bytes"], layers)
    for first, block in blocks:
        for i, layer_experts in enumerate(block):
            at = first + i - layers.start
            if ranks is not None:
                out["special"].append(kernel.token_tables(layer_experts))
            if out["coact"] is not None:
                out["coact"][at], out["adjacent"][at] = kernel.coactivation(layer_experts)
                out["load"][at] = np.diagonal(out["coact"][at])
            else:
                out["load"][at] = load_counts(layer_experts, n_experts)
            if traces is not None:
                out["trace"].append(trace_layer_counts(layer_experts, traces, n_experts))
        del block
    return out


class ExpertPassJob:
    """The per-layer pass, started in forked workers (large atlases) so the caller can work meanwhile.

    `np.bincount` holds the GIL, so threads would not help; the workers share the memory-mapped Arrow
    table (fork, as DataLoader workers do with `datasets`). Small atlases run in-process at `result()`.
    """

    def __init__(
        self,
        routing: pa.Table,
        n_experts: int,
        n_layers: int,
        top_k: int,
        *,
        min_count: int = 5,
        seed: int = 0,
        budget_bytes: int = 1 << 30,
        slice_tokens: int = COACT_SLICE,
        workers: int | None = None,
        what: tuple[str, ...] = ("load", "coactivation", "specialisation", "traces"),
    ):
        self.n_tokens, self.what = routing.num_rows, what
        self.ranks = (
            token_ranks(routing.column("token_id").to_numpy(), min_count, np.random.default_rng(seed))
            if "specialisation" in what
            else None
        )
        self.traces = trace_rows(routing) if "traces" in what else None
        if workers is None:
            big = self.n_tokens * n_layers * top_k >= PARALLEL_MIN_ENTRIES
            workers = (os.cpu_count() or 1) if big else 1
        workers = max(1, min(workers, n_layers))
        if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
            workers = 1
        self.shared = {
            "column": routing.column("experts"),
            "n_tokens": self.n_tokens,
            "n_experts": n_experts,
            "n_layers": n_layers,
            "top_k": top_k,
            "ranks": self.ranks,
            "traces": self.traces,
            "what": what,
            "budget_bytes": max(1, budget_bytes // workers),
            "slice_tokens": slice_tokens,
        }
        bounds = np.linspace(0, n_layers, workers + 1).round().astype(int)
        self.groups = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        self._pool = self._async = None
        if workers > 1:
            _SHARED.update(self.shared)
            try:  # the workers fork here and inherit `_SHARED`
                self._pool = multiprocessing.get_context("fork").Pool(workers)
            finally:
                _SHARED.clear()
            self._async = self._pool.map_async(_pass_layers, self.groups, chunksize=1)

    def close(self) -> None:
        """Stop the workers (idempotent); `result()` calls it."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def result(self) -> ExpertPass:
        if self._async is not None:
            try:
                parts = self._async.get()
            finally:
                self.close()
                self._async = None
        else:
            parts = [_pass_layers(g, self.shared) for g in self.groups]
        load = np.concatenate([p["load"] for p in parts])
        coact = np.concatenate([p["coact"] for p in parts]) if "coactivation" in self.what else None
        adjacent = np.concatenate([p["adjacent"] for p in parts]) if "coactivation" in self.what else None
        special = [s for p in parts for s in p["special"]]
        tc = None
        if self.traces is not None:
            per_layer = [c for p in parts for c in p["trace"]]
            tc = TraceCounts(*(np.stack([c[i] for c in per_layer]) for i in range(4)))
        return ExpertPass(load, coact, adjacent, special, self.ranks, self.traces, tc, self.n_tokens)


def expert_pass(routing: pa.Table, n_experts: int, n_layers: int, top_k: int, **options) -> ExpertPass:
    """Run the per-layer metrics (options as `ExpertPassJob`) and wait for them."""
    return ExpertPassJob(routing, n_experts, n_layers, top_k, **options).result()
