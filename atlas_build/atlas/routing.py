"""Routing arrays -> rows of a `routing-<model_slug>` config, and back.

Both directions are vectorised: a routing table's `experts` column is a fixed-size list of fixed-size
lists, so its flat child buffer *is* the `[tokens, moe_layers, top_k]` array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN


def nested_fixed_list(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """`[n, a, b]` numpy array -> Arrow `fixed_size_list<fixed_size_list<value_type, b>, a>` of length n."""
    if values.ndim != 3:
        raise ValueError(f"expected a [tokens, moe_layers, top_k] array, got shape {values.shape}")
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    inner = pa.FixedSizeListArray.from_arrays(flat, values.shape[2])
    return pa.FixedSizeListArray.from_arrays(inner, values.shape[1])


def routing_array(column: pa.Array | pa.ChunkedArray, dtype=None) -> np.ndarray:
    """Arrow `experts`/`weights` column -> `[n, moe_layers, top_k]` numpy array (zero-copy where possible).

    Null `weights` rows come back as NaN (float) arrays.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            raise ValueError("empty column")
        column = column.combine_chunks() if column.num_chunks > 1 else column.chunk(0)
    outer_size = column.type.list_size
    inner_size = column.type.value_type.list_size
    if column.null_count:
        inner = column.fill_null(pa.scalar([[None] * inner_size] * outer_size, column.type))
        flat = inner.flatten().flatten().to_numpy(zero_copy_only=False)
    else:
        flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
    out = flat.reshape(len(column), outer_size, inner_size)
    return out.astype(dtype, copy=False) if dtype is not None else out


def routing_table(
    schema: pa.Schema,
    *,
    source_ids: Sequence[str],
    corpus: Sequence[str],
    token_counts: np.ndarray,
    token_ids: np.ndarray,
    tokens: Sequence[str],
    char_spans: np.ndarray,
    is_target: np.ndarray,
    experts: np.ndarray,
    weights: np.ndarray | None,
    segment: Sequence[str | None] | None = None,
    marker: Sequence[str | None] | None = None,
    score_experts: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    router_inputs: np.ndarray | None = None,
) -> pa.Table:
    """Build routing rows for a batch of texts.

    Args:
        schema: the config's schema (`schema.routing_schema`).
        source_ids, corpus: one entry per text.
        token_counts: int `[texts]`, tokens per text.
        token_ids: int `[T]` with T = token_counts.sum().
        tokens: `[T]` token strings.
        char_spans: int32 `[T, 2]` character offsets (start, end), -1 for special tokens.
        is_target: bool `[T]`.
        experts: int `[T, moe_layers, top_k]`, ordered by weight, highest first.
        weights: float32 `[T, moe_layers, top_k]` or None when the engine gives ids only.
        segment, marker: `[T]` trace labels, or None (all null).
        score_experts, scores: int `[T, moe_layers, M]` and float32 `[T, moe_layers, M]`, the top-M experts
            by selection score, highest first, and their scores; for schemas with score columns (None:
            null rows).
        router_inputs: float `[T, n, D]` projected router inputs, for schemas with a `router_inputs` column
            (stored as float16; a value beyond float16's range is refused, never stored as inf).
    """
    total = int(np.sum(token_counts))
    for name, arr in (("token_ids", token_ids), ("experts", experts), ("is_target", is_target)):
        if len(arr) != total:
            raise ValueError(f"{name} has {len(arr)} rows, token_counts sum to {total}")
    text_index = np.repeat(np.arange(len(source_ids)), token_counts)
    starts = np.concatenate([[0], np.cumsum(token_counts)[:-1]]) if len(token_counts) else np.zeros(0, int)
    token_index = np.arange(total) - np.repeat(starts, token_counts)
    source_arr = pa.array(source_ids, pa.string()).take(pa.array(text_index))
    corpus_arr = pa.array(corpus, pa.string()).take(pa.array(text_index))
    experts_type = schema.field("experts").type.value_type.value_type
    weights_type = schema.field("weights").type.value_type.value_type
    if weights is None:
        weights_arr = pa.nulls(total, schema.field("weights").type)
    else:
        weights_np = np.asarray(weights, dtype=np.float32).astype(weights_type.to_pandas_dtype(), copy=False)
        weights_arr = nested_fixed_list(weights_np, weights_type)
    columns = {
        "source_id": source_arr,
        "corpus": corpus_arr,
        "token_index": pa.array(token_index.astype(np.int32)),
        "token_id": pa.array(np.asarray(token_ids, dtype=np.int32)),
        "token": pa.array(list(tokens), pa.string()),
        "char_start": pa.array(np.asarray(char_spans[:, 0], dtype=np.int32)),
        "char_end": pa.array(np.asarray(char_spans[:, 1], dtype=np.int32)),
        "is_target": pa.array(np.asarray(is_target, dtype=bool)),
        "segment": pa.array(segment if segment is not None else [None] * total, pa.string()),
        "marker": pa.array(marker if marker is not None else [None] * total, pa.string()),
        "experts": nested_fixed_list(
            np.asarray(experts).astype(experts_type.to_pandas_dtype()), experts_type
        ),
        "weights": weights_arr,
    }
    if "scores" in schema.names:
        columns.update(score_arrays(schema, total, score_experts, scores))
    if ROUTER_INPUTS_COLUMN in schema.names:
        columns[ROUTER_INPUTS_COLUMN] = router_input_array(schema, total, router_inputs)
    return pa.table(columns, schema=schema)


class RouterInputRangeError(ValueError):
    """A router input is beyond float16's range (it would be stored as inf). A ValueError here (the metrics'
    release bundle carries this module without `atlas_build.errors`); the builder reports it as an
    `AtlasError`."""


def router_input_array(schema: pa.Schema, total: int, router_inputs: np.ndarray | None) -> pa.Array:
    """The `router_inputs` column: float16 `[T][n][D]` (null rows when the engine gave none)."""
    field = schema.field(ROUTER_INPUTS_COLUMN)
    if router_inputs is None:
        return pa.nulls(total, field.type)
    n, dim = field.type.list_size, field.type.value_type.list_size
    if router_inputs.shape != (total, n, dim):
        raise ValueError(f"router_inputs are {router_inputs.shape}, expected [{total}, {n}, {dim}]")
    values = np.asarray(router_inputs, dtype=np.float64)
    stored = values.astype(np.float16)
    overflow = np.isfinite(values) & ~np.isfinite(stored)
    if overflow.any() or not np.isfinite(values).all():
        worst = float(np.nanmax(np.abs(values)))
        raise RouterInputRangeError(
            f"router inputs reach {worst:.4g}, beyond float16's range (65504) or not finite: they cannot be "
            "stored; build without --router-inputs, or choose layers whose inputs stay in range"
        )
    return nested_fixed_list(stored, pa.float16())


def score_arrays(
    schema: pa.Schema, total: int, score_experts: np.ndarray | None, scores: np.ndarray | None
) -> dict[str, pa.Array]:
    """The `score_experts` and `scores` columns (null rows when the engine gave no scores)."""
    if (score_experts is None) != (scores is None):
        raise ValueError("score_experts and scores come together")
    if score_experts is None:
        return {name: pa.nulls(total, schema.field(name).type) for name in ("score_experts", "scores")}
    width = schema.field("scores").type.value_type.list_size
    if scores.shape[0] != total or scores.shape[-1] != width or score_experts.shape != scores.shape:
        raise ValueError(f"scores are {scores.shape}, expected [{total}, moe_layers, {width}]")
    id_type = schema.field("score_experts").type.value_type.value_type
    return {
        "score_experts": nested_fixed_list(
            np.asarray(score_experts).astype(id_type.to_pandas_dtype()), id_type
        ),
        "scores": nested_fixed_list(np.asarray(scores, dtype=np.float32), pa.float32()),
    }
