"""The README's tables list every column the configs really have (the schema is the contract)."""

from __future__ import annotations

import re
from pathlib import Path

from atlas_build.atlas.schema import FIXED_SCHEMAS, routing_schema

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_column_of_every_fixed_config():
    text = README.read_text(encoding="utf-8")
    for name, schema in FIXED_SCHEMAS.items():
        row = re.search(r"^\| `" + re.escape(name) + r"` \|.*\| `([^`]*)` \|$", text, re.M)
        assert row, f"README.md has no row for the {name} config"
        assert [c.strip() for c in row.group(1).split(",")] == schema.names, f"README.md's {name} columns"


def test_the_readme_lists_every_routing_column():
    text = README.read_text(encoding="utf-8")
    table = text.split("`routing-<model_slug>`, one row per token", 1)[1].split("\n\n", 2)[1]
    listed = [
        name for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for name in re.findall(r"`(\w+)`", cell)
    ]
    # Every column a routing config can have: with `--scores M` two more (`score_experts`, `scores`), with
    # `--router-inputs` one more (`router_inputs`).
    schema = routing_schema(32, 5, 8, "float16", scores_top_m=16, router_input_layers=2, router_input_dim=8)
    assert listed == schema.names


def test_the_card_lists_every_column_and_the_engine_provenance(small_atlas):
    import pyarrow.parquet as pq

    from atlas_build.atlas.manifest import Manifest

    card = (small_atlas / "README.md").read_text(encoding="utf-8")
    manifest = Manifest.load(small_atlas)
    for config in manifest.configs():
        names = pq.read_schema(small_atlas / manifest.config_files(config)[0]).names
        missing = [name for name in names if f"| `{name}` |" not in card]
        assert missing == [], f"the card's {config} table lacks {missing}"
    from importlib.metadata import version

    line = next(line for line in card.splitlines() if "; engine: " in line)
    assert f"torch {version('torch')}" in line
    assert "device cpu" in line and "CUDA graphs off (eager)" in line and "CPU threads 1" in line
    assert "batch size 16" in line and "dtype float32" in line
