"""The `router-inputs` check of an atlas built with `atlas build --router-inputs LAYERS --router-input-dim D`.

The models row's `router_input_*` fields and the routing config's `router_inputs` column must agree:

    fields      all set or all null; the layers are MoE layers of the row, strictly increasing; 1 <= D <=
                hidden size; a known projection (identity keeps D = hidden size)
    projection  the matrix regenerated from the recorded method, seed, hidden size and D has the recorded
                sha256 (a reader who regenerates it gets the very matrix the build used)
    shape       the column is `[len(router_input_layers)][D]` float16 and no row is null
    values      every stored value is finite

The vectors themselves are compared with the model's router by `atlas audit` (a re-routed sample).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_build.atlas.projection import IDENTITY, PROJECTIONS, projection_sha256
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN
from validation.ledger import Ledger
from validation.reading import iter_batches, require
from validation.rules import BATCH_ROWS

CHECK = "router-inputs"
DESCRIPTION = (
    "with --router-inputs: the models row's router_input_* fields are complete and consistent (MoE layers, "
    "1 <= D <= hidden size), the projection regenerated from the recorded seed has the recorded sha256, and "
    "`router_inputs` is [layers][D] float16, never null, every value finite"
)
FIELDS = (
    "router_input_layers",
    "router_input_dim",
    "router_input_hidden_size",
    "router_input_projection",
    "router_input_seed",
    "router_input_projection_sha256",
)


def stores_router_inputs(model: dict | None) -> bool:
    """Whether a models row says its routing config holds `router_inputs` (any field set)."""
    return model is not None and any(model.get(name) is not None for name in FIELDS)


def row_problems(model: dict) -> list[str]:
    """What is wrong with a models row's `router_input_*` fields (empty: consistent)."""
    missing = [name for name in FIELDS if model.get(name) is None]
    if missing:
        return [f"router_input fields set, but {', '.join(missing)} null"]
    problems = []
    layers, moe = list(model["router_input_layers"]), list(model["moe_layers"])
    if not layers:
        problems.append("router_input_layers is empty")
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        problems.append(f"router_input_layers {layers} are not strictly increasing")
    if [layer for layer in layers if layer not in moe]:
        problems.append(f"router_input_layers {layers} are not all MoE layers ({moe})")
    dim, hidden = int(model["router_input_dim"]), int(model["router_input_hidden_size"])
    method = model["router_input_projection"]
    if not 1 <= dim <= hidden:
        problems.append(f"router_input_dim {dim} is outside 1..hidden size {hidden}")
    if method not in PROJECTIONS:
        problems.append(f"router_input_projection {method!r} is not one of {PROJECTIONS}")
    elif method == IDENTITY and dim != hidden:
        problems.append(f"identity projection with router_input_dim {dim} != hidden size {hidden}")
    if problems:
        return problems
    again = projection_sha256(method, int(model["router_input_seed"]), hidden, dim)
    if again != model["router_input_projection_sha256"]:
        problems.append(
            f"the {method} matrix regenerated from seed {model['router_input_seed']} has sha256 {again[:12]}…, "
            f"the row records {str(model['router_input_projection_sha256'])[:12]}…: not reproducible"
        )
    return problems


def check_router_inputs(
    config: str, files: list[Path], model: dict, ledger: Ledger, batch_rows: int = BATCH_ROWS
) -> None:
    """Record `router-inputs` for one routing config whose models row stores router inputs."""
    ledger.declare(config, CHECK)
    problems = row_problems(model)
    if problems:
        ledger.fail(config, CHECK, problems)
        return
    n_layers, dim = len(model["router_input_layers"]), int(model["router_input_dim"])
    expected = pa.list_(pa.list_(pa.float16(), dim), n_layers)
    checked = 0
    for batch in iter_batches(files, ["source_id", "token_index", ROUTER_INPUTS_COLUMN], batch_rows):
        require(batch, [ROUTER_INPUTS_COLUMN], config)
        column = batch.column(ROUTER_INPUTS_COLUMN)
        if column.type != expected:
            ledger.fail(config, CHECK, [f"router_inputs is {column.type}, the models row implies {expected}"])
            return
        if column.null_count:
            ledger.fail(config, CHECK, [f"{column.null_count} row(s) with null router_inputs"])
            return
        values = routing_array(column)  # [n, layers, D] float16
        bad = ~np.isfinite(values).all(axis=2)  # [n, layers]
        ledger.count(config, CHECK, "token-layers with finite router inputs", bad.size, int(bad.sum()))
        checked += bad.size
        if bad.any() and ledger.wants_examples(config, CHECK):
            source = batch.column("source_id").to_pylist()
            index = batch.column("token_index").to_pylist()
            layers = model["router_input_layers"]
            ledger.add_examples(
                config,
                CHECK,
                (
                    f"{source[t]!r} token {index[t]} layer {layers[layer]}: a non-finite router input"
                    for t, layer in np.argwhere(bad)[:20]
                ),
            )
    ledger.declare(config, CHECK, token_layers=checked, dim=dim, projection=model["router_input_projection"])
