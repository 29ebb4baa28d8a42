"""What `atlas intervene` reads from the atlas: its labelled texts, their recorded target routing, the load.

Labelled texts are those with a target span, a lemma and a sense: `senses` (the sense is the synset) and the
user's `*-examples` configs whose rows carry a `label` (jsonl). Only texts the routing config routed count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.schema import (
    JSONL_EXAMPLES,
    MODELS,
    ROUTING_PREFIX,
    SENSES,
    SWORDS_EXAMPLES,
    WIC_EXAMPLES,
)
from atlas_build.atlas.store import read_config
from atlas_build.errors import AtlasError

LABELLED = (
    (SENSES, "synset"),
    (WIC_EXAMPLES, "label"),
    (SWORDS_EXAMPLES, "label"),
    (JSONL_EXAMPLES, "label"),
)


class InterveneError(AtlasError):
    """`atlas intervene` cannot run as asked (bad plan, no model in the atlas, hashes that differ)."""


@dataclass(frozen=True)
class Example:
    corpus: str
    source_id: str
    lemma: str
    sense: str
    text: str
    target_start: int
    target_end: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.corpus, self.source_id)


def routing_config(root: Path, manifest: Manifest, slug: str | None) -> tuple[str, dict]:
    """The routing config and its models row (one routed model, or the one `slug` names)."""
    routed = sorted(c for c in manifest.configs() if c.startswith(ROUTING_PREFIX))
    if not routed:
        raise InterveneError(
            f"{root} has no routed model (no routing config, no models row): build one with `atlas build`"
        )
    if slug is None and len(routed) > 1:
        raise InterveneError(f"{root} routes {len(routed)} models ({', '.join(routed)}): pass --slug")
    config = ROUTING_PREFIX + slug if slug else routed[0]
    if config not in routed:
        raise InterveneError(f"{root} has no {config}; its routed models: {', '.join(routed)}")
    rows = [
        r
        for r in read_config(root, manifest, MODELS).to_pylist()
        if r["model_slug"] == config[len(ROUTING_PREFIX) :]
    ]
    if len(rows) != 1:
        raise InterveneError(f"{root} has no models row for {config}: the atlas lacks its model's record")
    return config, rows[0]


def labelled_examples(root: Path, manifest: Manifest, config: str) -> list[Example]:
    """Every routed text with a target, a lemma and a sense, in (corpus, id) order."""
    routed: set[tuple[str, str]] = set()
    for rel in manifest.config_files(config):
        table = pq.read_table(Path(root) / rel, columns=["corpus", "source_id"])
        routed.update(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    out = []
    for corpus, sense_column in LABELLED:
        for row in read_config(root, manifest, corpus).to_pylist():
            if None in (
                row.get("lemma"),
                row.get(sense_column),
                row.get("target_start"),
                row.get("target_end"),
            ):
                continue
            if (corpus, row["example_id"]) not in routed:
                continue
            out.append(
                Example(
                    corpus,
                    row["example_id"],
                    row["lemma"],
                    str(row[sense_column]),
                    row["text"],
                    int(row["target_start"]),
                    int(row["target_end"]),
                )
            )
    return sorted(out, key=lambda e: e.key)


def target_routing(root: Path, manifest: Manifest, config: str) -> dict[tuple[str, str], np.ndarray]:
    """(corpus, source_id) -> the recorded experts of the text's target tokens, `[targets, L, k]` int64."""
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    for rel in manifest.config_files(config):
        table = pq.read_table(
            Path(root) / rel, columns=["corpus", "source_id", "token_index", "is_target", "experts"]
        )
        table = table.filter(pc.field("is_target")).sort_by(
            [("corpus", "ascending"), ("source_id", "ascending"), ("token_index", "ascending")]
        )
        if table.num_rows == 0:
            continue
        experts = routing_array(table.column("experts")).astype(np.int64)
        corpus, source = table.column("corpus").to_pylist(), table.column("source_id").to_pylist()
        for i, key in enumerate(zip(corpus, source, strict=True)):
            parts.setdefault(key, []).append(experts[i])
    return {key: np.stack(rows) for key, rows in parts.items()}


def expert_load(root: Path, manifest: Manifest, config: str, n_experts: int) -> np.ndarray:
    """float64 `[L, N]`: the share of the config's token rows whose top-k holds each expert, per MoE layer."""
    counts, rows = None, 0
    for rel in manifest.config_files(config):
        for batch in pq.ParquetFile(Path(root) / rel).iter_batches(columns=["experts"], batch_size=1 << 16):
            experts = routing_array(batch.column(0)).astype(np.int64)
            n, layers, _ = experts.shape
            if counts is None:
                counts = np.zeros((layers, n_experts), np.float64)
            for layer in range(layers):
                counts[layer] += np.bincount(experts[:, layer].reshape(-1), minlength=n_experts)[:n_experts]
            rows += n
    if counts is None or rows == 0:
        raise InterveneError(f"{config} has no routing rows: nothing to intervene on")
    return counts / rows
