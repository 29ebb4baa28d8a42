"""Helpers of the publishing tests: two SYNTHETIC atlas versions (random-init, not findings) and releases.

v1: 20 lemmas, one model (`synthetic-moe`). v2: 25 lemmas (30 more senses, 60 more pairs, 150 more routing
rows) and a second model (`synthetic-moe-b`). Both carry metrics computed with a small bootstrap.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_table
from atlas_build.atlas.schema import MODELS, MODELS_SCHEMA, SENSES, routing_config_name, routing_schema
from atlas_build.atlas.store import write_config
from atlas_build.atlas.synthetic import (
    random_routing,
    synthetic_models_row,
    tokenize_whitespace,
)
from dataset_cards.render import METRICS_DIR, write_card

V1_LEMMAS, V2_LEMMAS = 20, 25
SECOND_MODEL = "synthetic-moe-b"
REPO_ID = "routing-atlas-tests/atlas"


def add_synthetic_model(root: Path, slug: str, n_experts=16, n_layers=3, top_k=2, seed=1) -> None:
    """Route the atlas's senses with one more SYNTHETIC model (random routing) and record it."""
    manifest = Manifest.load(root)
    senses = pa.concat_tables(pq.read_table(root / rel) for rel in manifest.config_files(SENSES))
    model = synthetic_models_row(n_experts, n_layers, top_k, slug=slug)
    counts, tokens, spans = tokenize_whitespace(senses.column("text").to_pylist())
    starts = np.repeat(senses.column("target_start").to_numpy(), counts)
    ends = np.repeat(senses.column("target_end").to_numpy(), counts)
    experts, weights = random_routing(np.random.default_rng(seed), len(tokens), n_layers, n_experts, top_k)
    vocab: dict[str, int] = {}
    schema = routing_schema(n_experts, n_layers, top_k, model["weights_dtype"])
    table = routing_table(
        schema,
        source_ids=senses.column("example_id").to_pylist(),
        corpus=[SENSES] * senses.num_rows,
        token_counts=counts,
        token_ids=np.array([vocab.setdefault(t, len(vocab)) for t in tokens], dtype=np.int64),
        tokens=tokens,
        char_spans=spans,
        is_target=(spans[:, 0] < ends) & (spans[:, 1] > starts),
        experts=experts,
        weights=weights,
    )
    write_config(root, manifest, routing_config_name(slug), table, schema)
    rows = [r for rel in manifest.config_files(MODELS) for r in pq.read_table(root / rel).to_pylist()]
    write_config(
        root, manifest, MODELS, pa.Table.from_pylist([*rows, model], schema=MODELS_SCHEMA), MODELS_SCHEMA
    )
    manifest.builds.append({"kind": "synthetic", "model_slug": slug, "summary": f"synthetic model {slug}"})
    manifest.save(root)
    write_card(root)


def add_metrics(root: Path) -> dict:
    from atlas_build.metrics import MetricsOptions, run_metrics

    metrics = run_metrics(
        str(root), root / METRICS_DIR, options=MetricsOptions(n_bootstrap=20, n_permutations=9)
    )
    write_card(root)  # the card of the atlas itself now shows them too
    return metrics


def tree_state(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`: content hash, size, mtime and mode (to prove nothing changed)."""
    state = {}
    for path in sorted(Path(root).rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[path.relative_to(root).as_posix()] = (digest, info.st_size, info.st_mtime_ns, info.st_mode)
    return state


_REPORTS: dict[str, object] = {}


def cached_validation(root: Path):
    """The real validation, once per manifest: for tests whose subject is not the gate itself.

    The manifest pins every data file by sha256, so a report of one copy holds for an identical copy.
    """
    from validation import run_validation

    key = hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()
    if key not in _REPORTS:
        _REPORTS[key] = run_validation(Path(root))
    return _REPORTS[key]
