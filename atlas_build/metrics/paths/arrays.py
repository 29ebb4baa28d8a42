"""Path codes and the layer-major arrays every path statistic reads (metrics/paths/compute.py's inputs).

A token's *top-1 path* over a window of w consecutive MoE layers is the sequence of its first (highest
gate weight) experts in those layers; its *top-k path set* is the sequence of its top-k sets. Paths are
compared through integer codes: exact (ids packed into 64 bits) when the window's ids fit, otherwise a
64-bit hash (splitmix64), whose collisions (probability about n² 2^-64 among n paths) are negligible at
atlas sizes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas_build.atlas.routing import routing_array

WINDOWS = (1, 2, 4, "all")
# Long atlases: at most this many evenly spaced window starts per width for the diversity statistics.
MAX_WINDOW_STARTS = 4
# Top-k path sets cost k lookups per token and layer: fewer window starts (and no all-layer window).
MAX_SET_WINDOW_STARTS = 2


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose output bits all depend on every input bit."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def id_bits(n_experts: int) -> int:
    return max(1, int(np.ceil(np.log2(max(2, n_experts)))))


def window_codes(ids: np.ndarray, start: int, width: int, n_experts: int) -> tuple[np.ndarray, bool]:
    """Codes of the windows `ids[start:start + width]` (`ids` layer-major `[L, n]` top-1 ids or set codes).

    Returns `(codes uint64 [n], exact)`: packed ids when `width · bits(N) ≤ 64` (and `ids` are expert ids),
    else a splitmix64 chain over the window.
    """
    bits = id_bits(n_experts)
    window = ids[start : start + width]
    n = ids.shape[1]
    if ids.dtype != np.uint64 and width * bits <= 64:
        codes = np.zeros(n, dtype=np.uint64)
        for j in range(width):
            codes |= window[j].astype(np.uint64) << np.uint64(j * bits)
        return codes, True
    # Ids packed exactly into 64-bit words of 64 // bits layers each, the words chained through mix64.
    per_word = max(1, 64 // bits) if ids.dtype != np.uint64 else 1
    codes = np.full(n, 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, width, per_word):
            word = np.zeros(n, dtype=np.uint64)
            for j in range(lo, min(width, lo + per_word)):
                shift = np.uint64((j - lo) * bits) if per_word > 1 else np.uint64(0)
                word ^= window[j].astype(np.uint64) << shift
            codes = mix64(codes + word + np.uint64(lo + 1))
    return codes, False


def set_codes(experts: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Order-free codes of top-k sets: `[n, k]` ids -> `[n]` uint64, Σ of a random 64-bit value per id."""
    with np.errstate(over="ignore"):
        return mix64(table[experts.astype(np.intp)].sum(axis=1, dtype=np.uint64))


def _chunks(column: pa.ChunkedArray | pa.Array, rows: np.ndarray | None) -> list:
    if rows is not None:
        return [column.take(pa.array(np.asarray(rows, dtype=np.int64)))]
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def top_columns(
    column: pa.ChunkedArray | pa.Array, n_layers: int, slot: int = 0, rows: np.ndarray | None = None
) -> np.ndarray:
    """The experts in top-k slot `slot`, layer-major `[L, T]` (or `[L, len(rows)]`), chunk by chunk."""
    chunks = _chunks(column, rows)
    dtype = np.dtype(column.type.value_type.value_type.to_pandas_dtype())
    out = np.empty((n_layers, sum(len(c) for c in chunks)), dtype=dtype)
    at = 0
    for chunk in chunks:
        if len(chunk):
            out[:, at : at + len(chunk)] = routing_array(chunk)[:, :, slot].T
            at += len(chunk)
    return out


def layer_set_codes(
    column: pa.ChunkedArray | pa.Array,
    layers: list[int],
    n_experts: int,
    seed: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k set codes, layer-major `[len(layers), T]` uint64 (a random value table per layer)."""
    rng = np.random.default_rng(seed)
    tables = rng.integers(0, 2**63, size=(max(layers, default=0) + 1, n_experts), dtype=np.uint64)
    chunks = _chunks(column, rows)
    out = np.empty((len(layers), sum(len(c) for c in chunks)), dtype=np.uint64)
    at = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        arr = routing_array(chunk)
        for j, layer in enumerate(layers):
            out[j, at : at + len(chunk)] = set_codes(arr[:, layer, :], tables[layer])
        at += len(chunk)
    return out


def window_starts(n_layers: int, width: int, limit: int = MAX_WINDOW_STARTS) -> list[int]:
    """Evenly spaced starts of windows of `width` layers (all of them when there are ≤ `limit`)."""
    n = n_layers - width + 1
    if n <= 0:
        return []
    if n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def widths(n_layers: int) -> list[tuple[str, int]]:
    """`(name, width)` of the windows: 1, 2, 4 (when they fit) and all layers, without duplicates."""
    out: list[tuple[str, int]] = []
    for w in WINDOWS:
        width = n_layers if w == "all" else int(w)
        if width <= n_layers and width not in [x for _, x in out]:
            out.append((str(w), width))
    if out and out[-1][0] != "all" and out[-1][1] == n_layers:
        out[-1] = ("all", n_layers)
    return out
