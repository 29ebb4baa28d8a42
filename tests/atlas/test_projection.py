"""The router-input projection: deterministic from its seed, and inner products within the JL bound."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from atlas_build.atlas.projection import (
    GAUSSIAN_JL,
    IDENTITY,
    RouterInputProjection,
    jl_inner_product_bound,
    projection_matrix,
    projection_sha256,
)


def test_the_matrix_is_a_function_of_the_seed():
    a, b = projection_matrix(3, 64, 16), projection_matrix(3, 64, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, projection_matrix(4, 64, 16))
    # Written out independently: numpy's frozen legacy stream, N(0, 1) / sqrt(D), float64.
    expected = np.random.RandomState(3).standard_normal((64, 16)) / 4.0
    np.testing.assert_array_equal(a, expected)
    assert a.dtype == np.float64
    assert (
        projection_sha256(GAUSSIAN_JL, 3, 64, 16)
        == hashlib.sha256(expected.astype("<f8").tobytes()).hexdigest()
    )


def test_identity_keeps_the_vector():
    p = RouterInputProjection(seed=0, hidden_size=8, dim=0)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    assert p.method == IDENTITY and p.dim == 8
    np.testing.assert_array_equal(p.project(x), x.astype(np.float64))


@pytest.mark.parametrize("dim", [-1, 9])
def test_bad_dimensions_are_refused(dim):
    with pytest.raises(ValueError):
        RouterInputProjection(seed=0, hidden_size=8, dim=dim)


def test_inner_products_stay_within_the_jl_bound():
    rng = np.random.default_rng(11)
    n, hidden, dim, failure = 40, 1024, 512, 1e-3
    # Correlated vectors, like hidden states: a shared direction plus noise, and a few large ones.
    x = rng.standard_normal((n, hidden)) + 3 * rng.standard_normal(hidden)
    x[:5] *= 50
    projected = RouterInputProjection(seed=5, hidden_size=hidden, dim=dim).project(x)
    norms = np.linalg.norm(x, axis=1)
    error = np.abs(projected @ projected.T - x @ x.T) / np.outer(norms, norms)
    # The bound recomputed here: per vector z (sums and differences of unit pairs),
    # P(| |zP|^2 - |z|^2 | > eps |z|^2) <= 2 exp(-(eps^2 - eps^3) D / 4); union over n(n-1) of them.
    eps = next(
        e
        for e in np.arange(0.01, 0.5, 0.001)
        if 2 * n * (n - 1) * math.exp(-(e**2 - e**3) * dim / 4) <= failure
    )
    assert abs(jl_inner_product_bound(n, dim, failure) - eps) < 2e-3
    assert error.max() <= eps
    # Unbiased: over many seeds the mean error of one inner product shrinks towards zero.
    pair = np.stack([x[0], x[1]])
    means = [
        (lambda p: p[0] @ p[1])(RouterInputProjection(seed=s, hidden_size=hidden, dim=32).project(pair))
        for s in range(200)
    ]
    assert abs(np.mean(means) - x[0] @ x[1]) < 4 * np.std(means) / math.sqrt(200)


def test_a_router_input_beyond_float16_is_refused_not_stored_as_inf():
    from atlas_build.atlas.routing import RouterInputRangeError, router_input_array
    from atlas_build.atlas.schema import routing_schema

    schema = routing_schema(8, 2, 2, "float16", router_input_layers=1, router_input_dim=3)
    fine = router_input_array(schema, 2, np.full((2, 1, 3), 60000.0))
    assert fine.type == schema.field("router_inputs").type
    with pytest.raises(RouterInputRangeError, match="float16's range"):
        router_input_array(schema, 2, np.full((2, 1, 3), 70000.0))
