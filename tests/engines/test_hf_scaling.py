"""The hf engine's ways to scale, checked on CPU with the built-in (RANDOM-INIT) model.

`--device-map` (accelerate) places a checkpoint larger than one GPU over several; on a CPU-only machine
"cpu" and "auto" put everything on the CPU and must route exactly as the plain engine does. bfloat16 runs
in its own rounding: the expert sets mostly agree with float32 (how much on a real checkpoint on a GPU is
measured by `bench/bench_build.py --device cuda`).
"""

from __future__ import annotations

import numpy as np
import pytest

from atlas_build.engines.hf import HFEngine

from .conftest import TEXTS


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_device_map_routes_exactly_as_the_plain_engine(hf_engine, device_map):
    engine = HFEngine("tiny-deepseek-v3", device_map=device_map)
    try:
        assert str(engine.device) == "cpu"
        got, want = engine.route(TEXTS), hf_engine.route(TEXTS)
        np.testing.assert_array_equal(got.experts, want.experts)
        np.testing.assert_array_equal(got.weights, want.weights)
        assert engine.model_row() == hf_engine.model_row()
    finally:
        engine.close()


def test_bfloat16_routes_mostly_the_same_expert_sets(hf_engine):
    engine = HFEngine("tiny-deepseek-v3", dtype="bfloat16", device_map="auto")
    try:
        got, want = engine.route(TEXTS), hf_engine.route(TEXTS)
        assert engine.model_row()["dtype"] == "bfloat16"
        assert got.weights.dtype == np.float32 and np.all(np.diff(got.weights, axis=-1) <= 0)
        np.testing.assert_array_equal(got.token_ids, want.token_ids)
        same_set = (np.sort(got.experts, -1) == np.sort(want.experts, -1)).all(-1).mean()
        # Random-init routers have small margins; a trained model's agreement is far higher.
        assert same_set > 0.9, same_set
    finally:
        engine.close()


def test_driver_engine_without_weights_gives_the_same_models_row():
    """A distributed build's driver builds the architecture on the meta device: same row, no routing."""
    import pytest

    from atlas_build.engines.hf import HFEngine

    loaded = HFEngine("tiny-deepseek-v3")
    driver = HFEngine("tiny-deepseek-v3", load_weights=False)
    assert driver.device.type == "meta"
    assert driver.model_row() == loaded.model_row()
    with pytest.raises(RuntimeError, match="without weights"):
        driver.route(["a text"])
