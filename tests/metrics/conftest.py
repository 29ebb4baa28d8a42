"""Fixtures for the metrics tests: a private datasets cache and a compute helper."""

from __future__ import annotations

import pytest

from atlas_build.metrics import MetricsOptions, compute_metrics
from atlas_build.metrics.report.markdown import to_json


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.fixture(scope="session")
def compute(hf_cache):
    """`compute(atlas, **options)` -> the metrics.json dictionary (JSON values), via datasets.load_dataset."""

    def run(atlas, models=None, **options):
        options = {"n_bootstrap": 1000, "n_permutations": 499, **options}
        result = compute_metrics(atlas, models=models, options=MetricsOptions(**options), cache_dir=hf_cache)
        return to_json(result.metrics)

    return run


# The demo's size (`make demo`): 300 lemmas, tiny-deepseek-v3 and its random-init twin of seed 1.
DEMO_LEMMAS = 300
DEMO_TWIN = "tiny-deepseek-v3-seed1"


@pytest.fixture(scope="session")
def demo_atlas(tmp_path_factory, requires_wordnet):
    """The demo atlas as `make demo` builds it (RANDOM-INIT model + its twin). Read-only!"""
    from atlas_build.builder import BuildConfig, run_build

    out = tmp_path_factory.mktemp("demo") / "atlas-demo"
    for extra in ({}, {"random_init": True, "seed": 1, "slug": DEMO_TWIN}):
        config = BuildConfig(
            model="tiny-deepseek-v3", out=out, max_lemmas=DEMO_LEMMAS, progress=False, batch_size=32, **extra
        )
        run_build(config, log=lambda *_: None)
    return out
