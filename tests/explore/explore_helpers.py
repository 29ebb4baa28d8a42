"""Helpers of the explorer tests: reading the site's data scripts and the atlas's own target rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array

TWIN_SLUG = "tiny-deepseek-v3-random-init"
MODEL_SLUG = "tiny-deepseek-v3"


def read_data_file(path: Path) -> tuple[str, dict]:
    """A data script `window.cb("key",{...});` -> (key, data)."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition("(")
    assert head.startswith("window.atlas"), head
    decoder = json.JSONDecoder()
    key, end = decoder.raw_decode(rest)
    assert rest[end] == ","
    data, end2 = decoder.raw_decode(rest, end + 1)
    assert rest[end2:].strip() == ");"
    return key, data


def parquet_targets(root: Path, slug: str) -> dict[str, list[dict]]:
    """example_id -> its target sub-tokens' rows in token order, read straight from the Parquet files."""
    manifest = Manifest.load(root)
    files = [str(root / rel) for rel in manifest.config_files(f"routing-{slug}")]
    table = pads.dataset(files).to_table(filter=(pc.field("corpus") == "senses") & pc.field("is_target"))
    experts = routing_array(table.column("experts"))
    weights = routing_array(table.column("weights"), dtype=np.float32)
    out: dict[str, list[dict]] = {}
    for i, (source, index) in enumerate(
        zip(table.column("source_id").to_pylist(), table.column("token_index").to_pylist(), strict=True)
    ):
        out.setdefault(source, []).append(
            {
                "token_index": index,
                "experts": experts[i],
                "weights": weights[i],
                "token": table["token"][i].as_py(),
            }
        )
    for rows in out.values():
        rows.sort(key=lambda r: r["token_index"])
    return out
