"""`atlas audit` of stored router inputs (`atlas build --router-inputs`): the re-routed sample's router inputs,
projected with the recorded projection, against the stored float16 vectors.

`with_router_input_check(engine, ...)` returns the audit's engine unchanged for an atlas without router
inputs, else a stand-in that turns the engine's capture on, compares every text the audit routes through it
with the atlas's rows (in the audit's own order) and, on `close()`, logs the result and raises `AuditError`
when some token-layer's vector differs beyond the tolerance: per token-layer,
`max |stored - fresh| <= rtol · max |fresh|`, rtol two float16 units in the last place or the compute
dtype's, whichever is larger (the same rule as the weights').
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.projection import IDENTITY
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN
from atlas_build.errors import AtlasError

# float16 storage (2 ulp), or the compute dtype's rounding when coarser.
RTOL = {"float32": 2.0**-10, "float16": 2.0**-9, "bfloat16": 2.0**-6}
DEFAULT_RTOL = 2.0**-6
SHOWN = 5


class RouterInputAuditError(AtlasError):
    """Stored router inputs differ from the model's (beyond the float16 tolerance)."""


def stored_router_inputs(root: Path, manifest: Manifest, config: str, sources: list[str]) -> dict:
    """(corpus, source_id) -> stored float16 `[tokens, layers, D]`, in token_index order."""
    wanted = pa.array(sorted(set(sources)), pa.string())
    parts = []
    for rel in manifest.config_files(config):
        table = pq.read_table(
            Path(root) / rel, columns=["source_id", "corpus", "token_index", ROUTER_INPUTS_COLUMN]
        )
        parts.append(table.filter(pc.is_in(table.column("source_id"), value_set=wanted)))
    if not parts:
        return {}
    table = pa.concat_tables(parts).sort_by(
        [("corpus", "ascending"), ("source_id", "ascending"), ("token_index", "ascending")]
    )
    if table.num_rows == 0:
        return {}
    values = routing_array(table.column(ROUTER_INPUTS_COLUMN))
    keys = list(zip(table.column("corpus").to_pylist(), table.column("source_id").to_pylist(), strict=True))
    out, start = {}, 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out[keys[start]] = values[start:i]
            start = i
    return out


class RouterInputAudit:
    """The audit's engine, comparing the router inputs of what it routes (see the module docstring)."""

    def __init__(self, engine, row: dict, stored: dict, chosen: list[tuple[str, str, str]], log):
        dim = 0 if row["router_input_projection"] == IDENTITY else int(row["router_input_dim"])
        engine.enable_router_inputs(tuple(row["router_input_layers"]), dim, int(row["router_input_seed"]))
        if engine.projection.sha256 != row["router_input_projection_sha256"]:
            raise RouterInputAuditError(
                "the projection regenerated from the models row's seed differs from the recorded one (sha256): "
                "run `atlas validate` on the atlas"
            )
        self._engine, self._row, self._stored, self._chosen, self._log = engine, row, stored, chosen, log
        self.rtol = RTOL.get(str(row.get("dtype")), DEFAULT_RTOL)
        self.cursor = 0
        self.token_layers = 0
        self.close_ones = 0
        self.worst = 0.0
        self.first: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def route(self, texts: list[str]):
        batch = self._engine.route(texts)
        keys = self._chosen[self.cursor : self.cursor + len(texts)]
        if [text for _, _, text in keys] != list(texts):
            raise RuntimeError("the audit routed texts out of its sample's order")
        self.cursor += len(texts)
        offsets = np.concatenate([[0], np.cumsum(batch.token_counts)])
        for i, (corpus, source, _) in enumerate(keys):
            fresh = batch.router_inputs[offsets[i] : offsets[i + 1]]
            self.compare(f"{corpus}:{source}", self._stored.get((corpus, source)), fresh)
        return batch

    def compare(self, where: str, stored: np.ndarray | None, fresh: np.ndarray) -> None:
        """One text: stored float16 `[n, layers, D]` against the fresh float32 projection."""
        n_layers = fresh.shape[1]
        if stored is None or stored.shape != fresh.shape:
            self.token_layers += max(0 if stored is None else len(stored), len(fresh)) * n_layers
            self._note(f"{where}: the atlas holds no router inputs of these {len(fresh)} tokens")
            return
        fresh16 = fresh.astype(np.float16).astype(np.float64)
        diff = np.abs(stored.astype(np.float64) - fresh16).max(axis=2)  # [n, layers]
        scale = np.abs(fresh.astype(np.float64)).max(axis=2)
        ok = diff <= self.rtol * scale
        self.token_layers += ok.size
        self.close_ones += int(ok.sum())
        relative = diff / np.maximum(scale, np.finfo(np.float64).tiny)
        self.worst = max(self.worst, float(relative.max(initial=0.0)))
        layers = self._row["router_input_layers"]
        for token, layer in np.argwhere(~ok)[: SHOWN - len(self.first)]:
            self._note(
                f"{where} token {token} layer {layers[layer]}: router input differs by "
                f"{relative[token, layer]:.3g} of its largest entry (tolerance {self.rtol:g})"
            )

    def _note(self, line: str) -> None:
        if len(self.first) < SHOWN:
            self.first.append(line)

    def close(self) -> None:
        self._engine.close()
        if self.cursor < len(self._chosen):
            return  # the audit stopped early: its own error is the one to report
        bad = self.token_layers - self.close_ones
        self._log(
            f"router inputs audited on {self.token_layers} token-layers: {self.close_ones} within rtol "
            f"{self.rtol:g} of the model's (largest relative difference {self.worst:.3g})"
        )
        if bad:
            raise RouterInputAuditError(
                f"{bad} of {self.token_layers} token-layers' stored router inputs differ from the model's: "
                + "; ".join(self.first)
            )


def with_router_input_check(
    engine,
    row: dict,
    root: Path,
    manifest: Manifest,
    config: str,
    chosen: list[tuple[str, str, str]],
    log: Callable[[str], None] = print,
):
    """The audit's engine: unchanged without stored router inputs, else a `RouterInputAudit` around it."""
    if not row.get("router_input_layers"):
        return engine
    stored = stored_router_inputs(root, manifest, config, [source for _, source, _ in chosen])
    return RouterInputAudit(engine, row, stored, chosen, log)
