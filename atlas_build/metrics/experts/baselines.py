"""What co-activation and load look like under uniform routing that obeys the model's own router constraints.

A group-limited router (DeepSeek-V2/V3: `n_group` groups of N / n_group consecutive experts, of which
`topk_group` are kept per token, then the top-k experts among the kept groups) makes experts of one group
co-activate more than (k − 1)/(N − 1) even when routing carries no information. The baseline here is
*uniform routing under the constraints*: per token, topk_group of the n_group groups uniformly at random,
then k of their M = topk_group · N / n_group experts uniformly at random. Analytically

    P0(E_j | E_i) = (k − 1)/(M − 1)                                  i, j in one group
    P0(E_j | E_i) = (k − 1)/(M − 1) · (topk_group − 1)/(n_group − 1)   different groups

(no groups: (k − 1)/(N − 1)). Finite-sample statistics (entropy, max load, the largest conditional) come
from a seeded simulation of the same routing with the same number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RouterConstraints:
    n_experts: int
    top_k: int
    n_group: int = 1
    topk_group: int = 1

    @classmethod
    def of(cls, row: dict) -> RouterConstraints:
        """From a `models` row; group limits apply only when they are set and divide the experts."""
        n, k = int(row["n_routed_experts"]), int(row["top_k"])
        groups, kept = row.get("n_group") or 1, row.get("topk_group") or 1
        if groups <= 1 or n % groups or kept >= groups or kept * (n // groups) < k:
            groups, kept = 1, 1
        return cls(n, k, int(groups), int(kept))

    @property
    def grouped(self) -> bool:
        return self.n_group > 1

    @property
    def group_size(self) -> int:
        return self.n_experts // self.n_group

    @property
    def eligible(self) -> int:
        """M: experts a token can choose from once its groups are picked."""
        return self.topk_group * self.group_size if self.grouped else self.n_experts

    def conditional(self) -> tuple[float, float]:
        """(P0 within a group, P0 across groups) of P(E_j | E_i); equal without groups."""
        m, k = self.eligible, self.top_k
        within = (k - 1) / (m - 1) if m > 1 else float("nan")
        if not self.grouped:
            return within, within
        return within, within * (self.topk_group - 1) / (self.n_group - 1)

    def conditional_matrix(self) -> np.ndarray:
        """P0(E_j | E_i) `[N, N]` (NaN diagonal)."""
        within, across = self.conditional()
        group = np.arange(self.n_experts) // self.group_size
        out = np.where(group[:, None] == group[None, :], within, across).astype(np.float64)
        np.fill_diagonal(out, np.nan)
        return out

    def describe(self) -> dict:
        within, across = self.conditional()
        return {
            "method": "uniform routing under the router's constraints (top-k"
            + (", n_group, topk_group" if self.grouped else "")
            + "), analytic",
            "n_group": self.n_group if self.grouped else None,
            "topk_group": self.topk_group if self.grouped else None,
            "same_group": within,
            "other_group": across,
            "unconstrained": (self.top_k - 1) / (self.n_experts - 1) if self.n_experts > 1 else None,
        }


def simulate_uniform(
    constraints: RouterConstraints, n_tokens: int, seed: int, chunk: int = 1 << 16
) -> np.ndarray:
    """`[k, T]` expert ids of T tokens routed uniformly under the constraints (seeded; ids distinct per token)."""
    c = constraints
    rng = np.random.default_rng(seed)
    out = np.empty((c.top_k, n_tokens), dtype=np.int64)
    for lo in range(0, n_tokens, chunk):
        t = min(chunk, n_tokens - lo)
        local = _floyd_sample(rng, t, c.eligible, c.top_k)
        if c.grouped:
            groups = np.argsort(rng.random((t, c.n_group)), axis=1)[:, : c.topk_group]
            chosen = np.take_along_axis(groups, local // c.group_size, axis=1)
            experts = chosen * c.group_size + local % c.group_size
        else:
            experts = local
        out[:, lo : lo + t] = experts.T
    return out


def _floyd_sample(rng: np.random.Generator, n: int, m: int, k: int) -> np.ndarray:
    """`[n, k]` uniformly random k-subsets of range(m), one per row (Floyd's algorithm, vectorised over rows:
    for j = m − k .. m − 1, draw t in [0, j]; keep t unless already chosen, then j)."""
    out = np.empty((n, k), dtype=np.int64)
    for col, j in enumerate(range(m - k, m)):
        t = rng.integers(0, j + 1, n)
        taken = (out[:, :col] == t[:, None]).any(axis=1) if col else np.zeros(n, bool)
        out[:, col] = np.where(taken, j, t)
    return out
