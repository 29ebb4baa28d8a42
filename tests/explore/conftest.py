"""Fixtures of the explorer tests: a real atlas with a model and its random-init twin, metrics, a site.

The atlas is `small_atlas` (tiny-deepseek-v3, RANDOM-INIT, on WordNet) plus a second build of the same
architecture with `--random-init --seed 1`, so the model switcher has a twin to put beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.explore.browser import find_browser

TWIN_SLUG = "tiny-deepseek-v3-random-init"
MODEL_SLUG = "tiny-deepseek-v3"


@pytest.fixture(scope="session")
def twin_atlas(small_atlas, tmp_path_factory) -> Path:
    """small_atlas + a random-init twin (seed 1) + metrics/ (few resamples). Read-only!"""
    from atlas_build.build import BuildConfig, run_build
    from atlas_build.metrics import MetricsOptions, run_metrics

    root = tmp_path_factory.mktemp("explore") / "atlas"
    shutil.copytree(small_atlas, root)
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3", out=root, random_init=True, seed=1, progress=False, texts_per_shard=64
        ),
        log=lambda *_: None,
    )
    options = MetricsOptions(n_bootstrap=50, n_permutations=19)
    run_metrics(str(root), root / "metrics", options=options, cache_dir=str(tmp_path_factory.mktemp("hf")))
    return root


@pytest.fixture(scope="session")
def site(twin_atlas, tmp_path_factory) -> Path:
    from atlas_build.explore import build_site

    out = tmp_path_factory.mktemp("site") / "site"
    build_site(twin_atlas, out)
    return out


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; skips the test when there is none."""
    from atlas_build.explore.browser import chromium

    _, _, reason = find_browser()
    if reason:
        pytest.skip(f"browser tests need headless Chromium: {reason}")
    with chromium() as driver:
        yield driver


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
