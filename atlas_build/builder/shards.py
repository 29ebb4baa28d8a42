"""Routing one shard: engine -> rows (target and span labels) -> an atomic shard file and its done-marker.

Also what a shard's key depends on (`run_fingerprint`), the models row checks and the engine factory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import RouterInputRangeError, routing_table
from atlas_build.atlas.schema import (
    MODELS,
    MODELS_SCHEMA,
    default_model_slug,
)
from atlas_build.atlas.shards import mark_shard_done
from atlas_build.atlas.store import read_config
from atlas_build.atlas.texts import TextItem
from atlas_build.atlas.writer import (
    WrittenFile,
    crash_point,
    write_parquet_atomic,
)
from atlas_build.builder.options import BuildConfig
from atlas_build.errors import AtlasError, BuildOptionsError
from atlas_build.executors.base import ShardTask


def span_labels(
    char_spans: np.ndarray, token_counts: np.ndarray, items: list[TextItem], field_name: str
) -> list[str | None] | None:
    """Per-token label from the items' `(name, start, end)` spans: a token takes the name of the first span it
    overlaps (special tokens, with no characters, take none). None when no item has such spans."""
    if not any(getattr(item, field_name) for item in items):
        return None
    labels = np.full(len(char_spans), None, dtype=object)
    offset = 0
    for item, count in zip(items, token_counts.tolist(), strict=True):
        spans = char_spans[offset : offset + count]
        for name, start, end in reversed(getattr(item, field_name)):  # reversed: the first span wins
            hit = (spans[:, 0] >= 0) & (spans[:, 0] < end) & (spans[:, 1] > start)
            labels[offset : offset + count][hit] = name
        offset += count
    return labels.tolist()


def shard_table(engine, items: list[TextItem], schema: pa.Schema, weights_stored: bool) -> pa.Table:
    """Route one shard's texts and return its routing rows."""
    batch = engine.route([item.text for item in items])
    starts = np.repeat(np.array([item.target_start for item in items], dtype=np.int64), batch.token_counts)
    ends = np.repeat(np.array([item.target_end for item in items], dtype=np.int64), batch.token_counts)
    spans = batch.char_spans
    is_target = (spans[:, 0] >= 0) & (spans[:, 0] < ends) & (spans[:, 1] > starts)
    try:
        return _routing_rows(schema, items, batch, spans, is_target, weights_stored)
    except RouterInputRangeError as error:
        raise AtlasError(str(error)) from None


def _routing_rows(schema, items, batch, spans, is_target, weights_stored) -> pa.Table:
    return routing_table(
        schema,
        source_ids=[item.source_id for item in items],
        corpus=[item.corpus for item in items],
        token_counts=batch.token_counts,
        token_ids=batch.token_ids,
        tokens=batch.tokens,
        char_spans=spans,
        is_target=is_target,
        experts=batch.experts,
        weights=batch.weights if weights_stored else None,
        segment=span_labels(spans, batch.token_counts, items, "segments"),
        marker=span_labels(spans, batch.token_counts, items, "markers"),
        score_experts=batch.score_experts,
        scores=batch.scores,
        router_inputs=batch.router_inputs,
    )


def run_fingerprint(
    row: dict[str, Any], schema: pa.Schema, config: BuildConfig | None = None, provenance=None
) -> str:
    """Everything a routing shard's bytes depend on besides its texts; part of the shard key.

    The model (id, revision, checkpoint hash, random-init seed), the engine and its numerics (compute
    dtype, batch size: padding changes the float rounding, device and device map, engine arguments, CPU
    threads), the libraries that compute it, and the schema (which holds --weights-dtype). Resuming with any of these
    changed redoes the shards instead of mixing two runs in one config.
    """
    keys = ("model_id", "revision", "checkpoint_sha256", "engine", "dtype", "random_init", "seed")
    identity: dict[str, Any] = {key: row.get(key) for key in keys}
    if config is not None:
        identity.update(
            batch_size=config.batch_size,
            device=config.device,
            device_map=config.device_map,
            engine_kwargs=config.engine_kwargs,
        )
    # CPU threads too: a matmul's reduction order, and so its rounding, can follow the thread count.
    keys = ("torch", "transformers", "vllm", "attention", "experts", "cuda_graphs", "moe_backend", "threads")
    for key in keys:
        if provenance and provenance.get(key) is not None:
            identity[key] = provenance[key]
    # The projection of stored router inputs (its seed is not in the schema); absent keys keep older keys.
    for key in ("router_input_layers", "router_input_projection_sha256"):
        if row.get(key) is not None:
            identity[key] = row[key]
    return json.dumps({**identity, "schema": schema.to_string()}, sort_keys=True, default=str)


def check_text_lengths(engine, items: list[TextItem], chunk: int = 1024) -> None:
    """Refuse texts longer than the model's context before routing anything, naming them."""
    limit = engine.max_length
    if limit is None:
        return
    from atlas_build.engines.hf import TextTooLongError

    too_long: list[tuple[TextItem, int]] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        ids = engine.tokenizer([item.text for item in part], add_special_tokens=True)["input_ids"]
        too_long += [(item, len(i)) for item, i in zip(part, ids, strict=True) if len(i) > limit]
    if too_long:
        named = ", ".join(f"{item.corpus} {item.source_id!r} ({n} tokens)" for item, n in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise TextTooLongError(
            f"{len(too_long)} text(s) are longer than the model's context of {limit} tokens: {named}{more}. "
            "Nothing was written: split or drop those texts, or use a model with a longer context"
        )


class ShardWorker:
    """Routes shard tasks and writes each shard atomically, then its done-marker.

    Picklable before first use (the engine is built lazily), so the Ray executor can ship it to workers.
    """

    def __init__(self, config: BuildConfig, schema: pa.Schema, weights_stored: bool, engine=None):
        self.config = config
        self.schema = schema
        self.weights_stored = weights_stored
        self._engine = engine

    def __getstate__(self):
        return {**self.__dict__, "_engine": None}

    def __call__(self, task: ShardTask) -> WrittenFile:
        if self._engine is None:
            self._engine = make_engine(self.config)
        layout = AtlasLayout(self.config.out)
        crash_point("shard-before-write")
        table = shard_table(self._engine, list(task.items), self.schema, self.weights_stored)
        path = layout.shard_path(task.config, task.index, task.part)
        written = write_parquet_atomic(table, path, self.schema)
        crash_point("marker-before-write")
        try:
            mark_shard_done(layout, task.config, task.index, written, task.inputs_sha256, task.part)
        except BaseException:
            # Unmarked, the shard would be redone anyway: drop it, so that a failed write (a full disk)
            # leaves the atlas as it was before the shard began.
            path.unlink(missing_ok=True)
            raise
        crash_point("marker-written")
        return written


# ---- the build ------------------------------------------------------------------------------------
def model_slug(config: BuildConfig) -> str:
    return default_model_slug(config.model_id or config.model, config.random_init, config.slug)


def merge_models_row(root: Path, manifest: Manifest, row: dict[str, Any]) -> pa.Table:
    rows = [
        r for r in read_config(root, manifest, MODELS).to_pylist() if r["model_slug"] != row["model_slug"]
    ]
    rows.append(row)
    rows.sort(key=lambda r: r["model_slug"])
    return pa.Table.from_pylist(rows, schema=MODELS_SCHEMA)


def check_slug_free(root: Path, manifest: Manifest, row: dict[str, Any]) -> None:
    """A slug already in the atlas may only be rebuilt (resumed) by the same checkpoint."""
    for existing in read_config(root, manifest, MODELS).to_pylist():
        if existing["model_slug"] != row["model_slug"]:
            continue
        same = all(
            existing.get(k) == row.get(k) for k in ("model_id", "checkpoint_sha256", "random_init", "engine")
        )
        if not same:
            raise BuildOptionsError(
                f"the atlas already has a model with slug {row['model_slug']!r} ({existing['model_id']}, "
                f"{existing['engine']}); pass --slug to give this one another name"
            )


# The models row's storage settings: a routing config holds one schema, so they change only all at once.
STORAGE_FIELDS = (("weights_dtype", "--weights-dtype"), ("scores_top_m", "--scores"))


def storage_change(root: Path, manifest: Manifest, row: dict[str, Any], replace: bool, name: str) -> bool:
    """Whether this build stores the model's routing otherwise than the atlas holds it (then every corpus's
    shards of `name` are replaced); refused unless `replace` (`--replace-routing`)."""
    for existing in read_config(root, manifest, MODELS).to_pylist():
        if existing["model_slug"] != row["model_slug"]:
            continue
        changed = [
            f"{flag} {existing.get(key) or 'off'} -> {row.get(key) or 'off'}"
            for key, flag in STORAGE_FIELDS
            if existing.get(key) != row.get(key)
        ]
        if changed and not replace:
            raise BuildOptionsError(
                f"{name} is stored with other settings ({', '.join(changed)}): rebuilding replaces its routing of "
                "every corpus; pass --replace-routing to do so, or --slug NAME to build beside it"
            )
        return bool(changed)
    return False


def make_engine(config: BuildConfig, load_weights: bool = True):
    """The build's engine. `load_weights=False`: the architecture only (meta device), for the driver of a
    distributed build, whose workers load the weights."""
    from atlas_build.engines import ENGINES

    engine_cls = ENGINES.get(config.engine)
    return engine_cls(
        config.model,
        revision=config.revision,
        dtype=config.dtype,
        device=config.device,
        device_map=config.device_map,
        batch_size=config.batch_size,
        trust_remote_code=config.trust_remote_code,
        random_init=config.random_init,
        seed=config.seed,
        load_weights=load_weights,
        model_id=config.model_id,
        threads=config.threads,
        **({"scores_top_m": config.scores} if config.scores is not None else {}),
        **(
            {
                "router_input_layers": config.router_input_layer_list(),
                "router_input_dim": config.router_input_dim,
                "router_input_seed": config.seed,
            }
            if config.router_inputs is not None
            else {}
        ),
        **config.engine_kwargs,
    )
