"""Top-k set overlap at target tokens, chance-corrected so that models with different k and N compare.

Top-k sets are stored as bitsets (`[rows, layers, ceil(N/64)]` uint64), so the overlap of two sets in every
layer is `popcount(a & b)`, vectorised over pairs and layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.routing import routing_array

TARGET_MODES = ("first", "last", "all")


def chance_kappa(overlap, top_k: int, n_experts: int):
    """κ = (o − k²/N) / (k − k²/N).

    o is the overlap |E_a ∩ E_b| of two top-k sets of N experts; k²/N is its expectation when one of the
    sets is uniformly random. κ = 1 for identical sets, 0 at chance, −k/(N − k) for disjoint sets.
    """
    chance = top_k * top_k / n_experts
    return (np.asarray(overlap, dtype=np.float64) - chance) / (top_k - chance)


def expert_bitsets(experts: np.ndarray, n_experts: int, chunk: int = 1 << 16) -> np.ndarray:
    """`[n, L, k]` expert ids -> `[n, L, W]` uint64 sets (W = ceil(N/64)): bit e%64 of word e//64 is e.

    Built as a one-hot `[rows, 64 W]` bool block per chunk of (token, layer) rows, packed little-endian.
    """
    n_words = max(1, -(-n_experts // 64))
    ids = np.asarray(experts)
    rows = ids.reshape(-1, ids.shape[-1])
    out = np.empty((len(rows), n_words * 8), dtype=np.uint8)
    for lo in range(0, len(rows), chunk):
        block = rows[lo : lo + chunk]
        onehot = np.zeros((len(block), n_words * 64), dtype=bool)
        np.put_along_axis(onehot, block.astype(np.intp), True, axis=1)
        out[lo : lo + chunk] = np.packbits(onehot, axis=1, bitorder="little")
    return out.view("<u8").reshape(*ids.shape[:2], n_words)


@dataclass
class Targets:
    """Target-token top-k sets of the texts of one corpus, in the order of an id list.

    Text i's target rows are `bits[start[i] : start[i] + count[i]]` (count 0: the text has no routed target).
    """

    bits: np.ndarray  # [rows, L, W] uint64
    start: np.ndarray  # [texts] int64
    count: np.ndarray  # [texts] int64

    @property
    def present(self) -> np.ndarray:
        return self.count > 0


def target_rows_table(routing: pa.Table, corpus: str) -> pa.Table:
    """The routing rows of `corpus` that overlap the target span (source_id, token_index, experts)."""
    mask = pc.and_(routing.column("is_target"), pc.equal(routing.column("corpus"), corpus))
    return routing.select(["source_id", "token_index", "experts"]).filter(mask)


def select_targets(rows: pa.Table, ids: pa.Array | pa.ChunkedArray, mode: str, n_experts: int) -> Targets:
    """Pick the target sub-token(s) of every text in `ids` from its target rows.

    `first`/`last`: the is_target token with the lowest/highest token_index (in a causal model the last
    sub-token is the first position that has seen the whole word); `all`: every is_target token.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"target must be one of {TARGET_MODES}, got {mode!r}")
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n_ids = len(ids)
    position = pc.fill_null(pc.index_in(rows.column("source_id"), value_set=ids), -1)
    position = position.to_numpy().astype(np.int64)
    keep = np.flatnonzero(position >= 0)
    token_index = rows.column("token_index").to_numpy()[keep]
    order = keep[np.lexsort((token_index, position[keep]))]
    text = position[order]
    count = np.bincount(text, minlength=n_ids).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    if mode != "all":
        has = count > 0
        pick = start[has] + (count[has] - 1 if mode == "last" else 0)
        order = order[pick]
        count = has.astype(np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    if len(order):
        experts = routing_array(rows.column("experts").take(pa.array(order)))
        bits = expert_bitsets(experts, n_experts)
    else:
        column_type = rows.schema.field("experts").type
        bits = np.zeros((0, column_type.list_size, max(1, -(-n_experts // 64))), dtype=np.uint64)
    return Targets(bits=bits, start=start, count=count)


def pair_overlap(
    a: Targets, ia: np.ndarray, b: Targets, ib: np.ndarray, chunk: int = 1 << 14
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer overlap |E_a ∩ E_b| for text pairs `(a[ia[p]], b[ib[p]])`.

    With several target sub-tokens per text (mode `all`) the overlap is averaged over all
    `count_a * count_b` sub-token pairs: ō = (1 / (n_a n_b)) Σ_i Σ_j |E_a,i ∩ E_b,j|.

    Returns:
        `(overlap [P, L] float64, valid [P] bool)`; rows of invalid pairs (a text without target) are NaN.
    """
    ia = np.asarray(ia, dtype=np.int64)
    ib = np.asarray(ib, dtype=np.int64)
    n_layers = a.bits.shape[1]
    out = np.full((len(ia), n_layers), np.nan)
    valid = (a.count[ia] > 0) & (b.count[ib] > 0)
    pairs = np.flatnonzero(valid)
    if not len(pairs):
        return out, valid
    n_a, n_b = a.count[ia[pairs]], b.count[ib[pairs]]
    combos = n_a * n_b
    if np.all(combos == 1):
        rows_a, rows_b, owner = a.start[ia[pairs]], b.start[ib[pairs]], None
    else:
        owner = np.repeat(np.arange(len(pairs)), combos)
        q = np.arange(combos.sum()) - np.repeat(np.cumsum(combos) - combos, combos)
        per_b = n_b[owner]
        rows_a = a.start[ia[pairs]][owner] + q // per_b
        rows_b = b.start[ib[pairs]][owner] + q % per_b
    overlap = np.empty((len(rows_a), n_layers), dtype=np.float64)
    for s in range(0, len(rows_a), chunk):
        both = a.bits[rows_a[s : s + chunk]] & b.bits[rows_b[s : s + chunk]]
        overlap[s : s + chunk] = np.bitwise_count(both).sum(axis=-1, dtype=np.int32)
    if owner is not None:
        starts = np.cumsum(combos) - combos
        overlap = np.add.reduceat(overlap, starts, axis=0) / combos[:, None]
    out[pairs] = overlap
    return out, valid
