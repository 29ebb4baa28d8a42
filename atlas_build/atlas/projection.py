"""The seeded random projection of router inputs (`atlas build --router-inputs L --router-input-dim D`).

A router reads one hidden vector per token, of the model's hidden size H (7168 for DeepSeek-R1). Stored
whole, that is 14 KB per token and MoE layer in float16; projected to D dimensions by a Gaussian matrix
`P [H, D]` with entries N(0, 1/D), inner products are kept in expectation, `E[(xP)·(yP)] = x·y`, and within
`eps·|x||y|` with high probability (Johnson-Lindenstrauss): enough for the cosine similarities and linear
probes the geometry control and the predictability estimator compute.

The matrix is a function of (method, seed, H, D) alone: numpy's legacy `RandomState` (its stream is frozen
across numpy versions, unlike `Generator`'s), in float64. The models row records the method, the seed and the
sha256 of the matrix's float64 bytes, so that a reader (and validation) regenerates exactly the same matrix.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

# `models.router_input_projection`: how a stored vector was made from the router's input.
GAUSSIAN_JL = "gaussian-jl-v1"  # x @ P, P[i, j] ~ N(0, 1) / sqrt(D), numpy RandomState(seed), float64
IDENTITY = "identity"  # D = 0: the full vector, as the router read it
PROJECTIONS = (GAUSSIAN_JL, IDENTITY)


def projection_matrix(seed: int, hidden_size: int, dim: int) -> np.ndarray:
    """The float64 `[hidden_size, dim]` Gaussian JL matrix of `seed` (entries N(0, 1) / sqrt(dim))."""
    if hidden_size < 1 or dim < 1:
        raise ValueError(f"a projection needs hidden_size and dim of at least 1, got {hidden_size}, {dim}")
    rng = np.random.RandomState(seed)
    return rng.standard_normal((hidden_size, dim)) / math.sqrt(dim)


def projection_sha256(method: str, seed: int, hidden_size: int, dim: int) -> str:
    """sha256 of the float64 bytes of the matrix that `method` makes (of the empty string for `identity`)."""
    if method == IDENTITY:
        return hashlib.sha256(b"").hexdigest()
    if method != GAUSSIAN_JL:
        raise ValueError(f"unknown router-input projection {method!r}; expected one of {PROJECTIONS}")
    matrix = projection_matrix(seed, hidden_size, dim)
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f8").tobytes()).hexdigest()


class RouterInputProjection:
    """`project(x)`: router inputs float `[..., H]` -> float64 `[..., D]` (the identity when `dim` is 0)."""

    def __init__(self, seed: int, hidden_size: int, dim: int):
        if dim < 0:
            raise ValueError(f"the router-input dimension must be 0 (full vector) or positive, got {dim}")
        if dim > hidden_size:
            raise ValueError(f"the router-input dimension {dim} is larger than the hidden size {hidden_size}")
        self.seed, self.hidden_size = int(seed), int(hidden_size)
        self.method = IDENTITY if dim == 0 else GAUSSIAN_JL
        self.dim = hidden_size if dim == 0 else dim
        self._matrix = None if dim == 0 else projection_matrix(seed, hidden_size, dim)

    @property
    def matrix(self) -> np.ndarray | None:
        """The float64 `[H, D]` matrix (None for the identity)."""
        return self._matrix

    @property
    def sha256(self) -> str:
        return projection_sha256(self.method, self.seed, self.hidden_size, self.dim)

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"router inputs have width {x.shape[-1]}, expected {self.hidden_size}")
        if self._matrix is None:
            return x
        # One 2-D product (BLAS gemm), not a stack of small ones.
        return (x.reshape(-1, self.hidden_size) @ self._matrix).reshape(*x.shape[:-1], self.dim)


def jl_inner_product_bound(n_points: int, dim: int, failure: float = 1e-3) -> float:
    """eps such that, with probability at least 1 - `failure`, every pair of `n_points` vectors has
    `|(xP)·(yP) - x·y| <= eps·|x||y|` under a Gaussian JL matrix of `dim` columns.

    From the norm-preservation bound `P(| |zP|² - |z|² | > eps|z|²) <= 2·exp(-(eps² - eps³)·dim/4)` applied to
    the unit vectors' sum and difference (polarisation: the inner product error is at most eps), union over
    the 2·n(n-1)/2 differences and sums: solved for eps by bisection. Returns 1.0 when dim is too small.
    """
    pairs = max(n_points * (n_points - 1), 1)  # two vectors (sum, difference) per unordered pair

    def fails(eps: float) -> float:
        return 2 * pairs * math.exp(-(eps**2 - eps**3) * dim / 4)

    if fails(0.5) > failure:  # beyond 0.5 the (eps² - eps³) form stops being useful
        return 1.0
    low, high = 0.0, 0.5
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if fails(mid) > failure else (low, mid)
    return high
