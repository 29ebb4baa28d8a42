"""Fixtures of the explorer tests: a real atlas with a model and its random-init twin, metrics, a site.

The atlas is `small_atlas` (tiny-deepseek-v3, RANDOM-INIT, on WordNet) plus a second build of the same
architecture with `--random-init --seed 1`, so the model switcher has a twin to put beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atlas_build.explore.browser import find_browser


@pytest.fixture(scope="session")
def twin_atlas(small_atlas, tmp_path_factory) -> Path:
    """small_atlas + a random-init twin (seed 1) + metrics/ (few resamples). Read-only!"""
    from atlas_build.builder import BuildConfig, run_build
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
