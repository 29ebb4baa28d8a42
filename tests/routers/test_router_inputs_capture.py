"""`--router-inputs`: the engine's captured router inputs are the router's input, on every supported family.

The reference is `test_gate_recompute.Reference`: a separately loaded float32 copy of each tiny checkpoint, the
router's input taken by a forward *pre*-hook and widened to float64, each text alone (no padding). The engine
routes the texts in padded batches of two. D = 0 must give that vector itself; D > 0 must give it times the
JL matrix, which the test draws itself from the seed (numpy RandomState, N(0, 1) / sqrt(D)).
All checkpoints are random-init: this checks the capture, not any finding.
"""

from __future__ import annotations

import numpy as np
import pytest

from atlas_build.engines.hf import HFEngine
from atlas_build.errors import BuildOptionsError

from .conftest import TEXTS
from .test_gate_recompute import ALL, BUILTIN, MOE_BLOCKS, Reference, checkpoint_path

SEED, DIM = 7, 8
# float32 model arithmetic, batched with padding vs alone: the same vectors up to float32 rounding.
RTOL = 1e-5


def split(values: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(values, np.cumsum(counts)[:-1])


@pytest.mark.parametrize("name", ALL)
def test_stored_vectors_are_the_router_input(name, tiny_checkpoint):
    path = checkpoint_path(name, tiny_checkpoint)
    model = BUILTIN if name == BUILTIN else str(path)
    ref = Reference(path, *MOE_BLOCKS[name])
    layers = ref.moe_layers[-2:] if len(ref.moe_layers) > 1 else ref.moe_layers
    full = HFEngine(model, batch_size=2, router_input_layers=layers, router_input_dim=0)
    projected = HFEngine(
        model, batch_size=2, router_input_layers=layers, router_input_dim=DIM, router_input_seed=SEED
    )
    try:
        batch, small = full.route(TEXTS), projected.route(TEXTS)
        row = projected.model_row()
    finally:
        full.close()
        projected.close()
    hidden = ref.config.get_text_config(decoder=True).hidden_size
    matrix = np.random.RandomState(SEED).standard_normal((hidden, DIM)) / np.sqrt(DIM)
    assert batch.router_inputs.shape == (batch.n_tokens, len(layers), hidden)
    assert small.router_inputs.shape == (batch.n_tokens, len(layers), DIM)
    wanted = [ref.moe_layers.index(layer) for layer in layers]
    for text, got, got_small in zip(
        TEXTS,
        split(batch.router_inputs, batch.token_counts),
        split(small.router_inputs, small.token_counts),
        strict=True,
    ):
        _, inputs = ref.router_inputs(text)
        expected = np.stack([inputs[i].numpy() for i in wanted], axis=1)  # float64 [n, layers, H]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got.astype(np.float64), expected, rtol=RTOL, atol=RTOL * scale)
        np.testing.assert_allclose(
            got_small.astype(np.float64),
            expected @ matrix,
            rtol=1e-4,
            atol=1e-4 * np.abs(expected @ matrix).max(),
        )
    assert row["router_input_layers"] == list(layers)
    assert row["router_input_dim"] == DIM and row["router_input_hidden_size"] == hidden
    assert row["router_input_projection"] == "gaussian-jl-v1" and row["router_input_seed"] == SEED


def test_no_router_inputs_by_default(tiny_checkpoint):
    engine = HFEngine(BUILTIN)
    try:
        assert engine.route(TEXTS[:2]).router_inputs is None
        row = engine.model_row()
    finally:
        engine.close()
    assert all(row[key] is None for key in row if key.startswith("router_input_"))


@pytest.mark.parametrize(
    ("layers", "dim", "message"),
    [
        ((0,), 4, "not an MoE layer"),
        ("all", 10_000, "between 1 and the hidden size"),
        ("all", -1, "D must be 0"),
    ],
)
def test_bad_router_input_options_are_refused_before_loading(layers, dim, message):
    with pytest.raises(BuildOptionsError, match=message):
        HFEngine(BUILTIN, router_input_layers=layers, router_input_dim=dim)
