"""Shared fixtures: the built-in checkpoint, a small real atlas, WordNet availability.

Tests run offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1); the built-in model is RANDOM-INIT.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports `datasets`: a fresh cache per session, or load_dataset may serve an Arrow cache
# of an earlier run's atlas that lived at the same tmp path.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="atlas-test-hf-datasets-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny models are latency-bound: one torch thread is as fast, and far faster when the cores are busy
# (OpenMP threads spin against each other).
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass

# Small enough for CI, large enough that every config has rows and most lemmas have pairs.
SMALL_ATLAS_LEMMAS = 12


def _wordnet_available() -> bool:
    try:
        from atlas_build.corpora.wordnet import find_wordnet_dir

        find_wordnet_dir()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def requires_wordnet():
    if not _wordnet_available():
        pytest.skip(
            "WordNet 3.0 not found: `make wordnet` (apt-get install wordnet-base wordnet-sense-index)"
        )


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in checkpoints materialise into a per-session cache, never the user's."""
    os.environ["ROUTING_ATLAS_CACHE"] = str(tmp_path_factory.mktemp("atlas-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """`atlas model materialize tiny-deepseek-v3 DIR` output (RANDOM-INIT)."""
    from atlas_build.models.tiny_deepseek_v3 import materialize

    return materialize(tmp_path_factory.mktemp("ckpt") / "tiny-deepseek-v3")


@pytest.fixture(scope="session")
def small_atlas(tmp_path_factory, requires_wordnet) -> Path:
    """A real atlas: WordNet corpora (SMALL_ATLAS_LEMMAS lemmas) routed by tiny-deepseek-v3. Read-only!"""
    from atlas_build.builder import BuildConfig, run_build

    out = tmp_path_factory.mktemp("atlas") / "small"
    run_build(
        BuildConfig(
            model="tiny-deepseek-v3",
            out=out,
            max_lemmas=SMALL_ATLAS_LEMMAS,
            progress=False,
            texts_per_shard=64,
        ),
        log=lambda *_: None,
    )
    return out


@pytest.fixture
def atlas_copy(small_atlas, tmp_path) -> Path:
    """A private, writable copy of `small_atlas`."""
    import shutil

    dest = tmp_path / "atlas"
    shutil.copytree(small_atlas, dest)
    return dest
