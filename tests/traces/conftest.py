"""Fixtures of the traces tests: the sample traces file, the tiny model's checkpoint and tokenizer."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
SAMPLE = FIXTURES / "sample.jsonl"
MODEL = "tiny-deepseek-v3"


@pytest.fixture(scope="session")
def sample_jsonl() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The built-in checkpoint as `atlas build` resolves it (materialised once into the session cache)."""
    from atlas_build.engines.hf import resolve_checkpoint

    return resolve_checkpoint(MODEL)[0]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from atlas_build.corpora.traces import load_tokenizer

    return load_tokenizer(tiny_dir)


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a module runs: a tiny model's small kernels (token-by-token decoding above
    all) are dominated by thread synchronisation, many times slower with 2 threads on a busy 2-core box."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def traces_atlas(tmp_path_factory, sample_jsonl) -> Path:
    """The sample traces routed by the tiny model (`atlas build --corpus traces`). Read-only!"""
    from atlas_build.builder import BuildConfig, run_build

    out = tmp_path_factory.mktemp("traces-atlas") / "atlas"
    with torch_threads(1):
        stats = run_build(
            BuildConfig(model=MODEL, out=out, corpus="traces", traces=str(sample_jsonl), progress=False),
            log=lambda *_: None,
        )
    assert stats.texts == 3 and stats.tokens > 100
    return out
