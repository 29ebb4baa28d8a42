"""Fixtures of the engine tests: the hf engine on the built-in model, and a stand-in `vllm` module.

The stand-in answers `LLM.generate` the way vLLM >= 0.32 documents it (`outputs[0].routed_experts`, int32
`[prompt_tokens, num_hidden_layers, top_k]`, dense layers zero, k ids in no particular order), with the
routing that the hf engine computes for the same token ids. It tests this project's side of the contract
only; vLLM itself is tested by `test_vllm_gpu.py` where it is installed.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from atlas_build.engines.hf import HFEngine

TEXTS = [
    "The bank of the river was muddy after the rain.",
    "She deposited money at the bank",
    "fox",
    "A quick brown fox jumps over the lazy dog near the old bank of the river today.",
]


class IdsEngine(HFEngine):
    """The hf engine fed token ids instead of texts (no re-tokenization): the stand-in vLLM's oracle."""

    def encode(self, texts):
        return [
            {"ids": np.asarray(ids, dtype=np.int64), "spans": np.full((len(ids), 2), -1, np.int32)}
            for ids in texts
        ]


def vllm_layout(experts: np.ndarray, num_hidden_layers: int, moe_layers, rng) -> np.ndarray:
    """Atlas experts `[T, moe, k]` -> vLLM's `[T, num_hidden_layers, k]` int32, dense layers zero, k shuffled."""
    out = np.zeros((experts.shape[0], num_hidden_layers, experts.shape[2]), dtype=np.int32)
    out[:, list(moe_layers)] = experts
    return rng.permuted(out, axis=-1) if out.size else out


def request_output(prompt_ids, routed):
    return SimpleNamespace(
        prompt_token_ids=list(prompt_ids),
        outputs=[SimpleNamespace(index=0, token_ids=[0], routed_experts=routed)],
    )


class FakeLLM:
    """`vllm.LLM` stand-in backed by the hf engine (`oracle`, set by the fixture)."""

    oracle: HFEngine | None = None
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakeLLM.instances.append(self)
        self.rng = np.random.default_rng(0)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert sampling_params.kwargs["max_tokens"] == 1
        ids = [p["prompt_token_ids"] for p in prompts]
        batch = self.oracle.route(ids)
        outputs, offset = [], 0
        for prompt, count in zip(ids, batch.token_counts.tolist(), strict=True):
            experts = batch.experts[offset : offset + count]
            offset += count
            layout = vllm_layout(
                experts, self.oracle.config.num_hidden_layers, self.oracle.spec.moe_layers, self.rng
            )
            outputs.append(request_output(prompt, layout))
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture(scope="session")
def hf_engine():
    engine = HFEngine("tiny-deepseek-v3")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def ids_engine():
    engine = IdsEngine("tiny-deepseek-v3")
    yield engine
    engine.close()


@pytest.fixture
def fake_vllm(monkeypatch, ids_engine):
    """`import vllm` gives the stand-in for the test's duration."""
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(FakeLLM, "oracle", ids_engine)
    monkeypatch.setattr(FakeLLM, "instances", [])
    return module
