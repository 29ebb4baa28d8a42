"""Fixtures for the metrics tests: a private datasets cache and a compute helper."""

from __future__ import annotations

import pytest

from atlas_build.metrics import MetricsOptions, compute_metrics
from atlas_build.metrics.report import to_json


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
