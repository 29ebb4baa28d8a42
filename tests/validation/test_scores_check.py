"""`scores-reproduce-experts`: the selection rules applied to stored top-M scores, against a plain-Python
implementation of each rule on the full scores."""

from __future__ import annotations

import numpy as np
import pytest

from validation.scores import DECIDED, TIE, UNDECIDED, reproduce_selection

N, K, GROUPS, KEEP = 32, 8, 8, 4


def rule(scores: list[float], method: str) -> list[int]:
    """The routers' choice on one token's full score vector, written out per method."""
    if method == "greedy":
        return sorted(sorted(range(N), key=lambda e: -scores[e])[:K])
    size = N // GROUPS
    members = [list(range(g * size, (g + 1) * size)) for g in range(GROUPS)]
    if method == "noaux_tc":
        group_score = [sum(sorted((scores[e] for e in m), reverse=True)[:2]) for m in members]
    else:  # group_limited_greedy
        group_score = [max(scores[e] for e in m) for m in members]
    kept = sorted(range(GROUPS), key=lambda g: -group_score[g])[:KEEP]
    allowed = [e for g in kept for e in members[g]]
    return sorted(sorted(allowed, key=lambda e: -scores[e])[:K])


def stored_top(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy", "noaux_tc"])
@pytest.mark.parametrize("m", [N, 16, K])
def test_decided_rows_reproduce_the_rule(method, m):
    rng = np.random.default_rng(0)
    scores = rng.random((3000, N)).astype(np.float32).astype(np.float64)
    truth = np.array([rule(row.tolist(), method) for row in scores])
    ids, values = stored_top(scores, m)
    chosen, status = reproduce_selection(ids, values, K, N, method, GROUPS, KEEP)
    decided = status == DECIDED
    np.testing.assert_array_equal(chosen[decided], truth[decided])
    if m == N or method == "greedy":
        assert decided.all()  # every score known, or greedy: the top-k are always the stored top
    else:
        assert 0 < decided.mean() < 1 and (status == UNDECIDED).any()


def test_a_wrong_expert_is_caught_and_ties_are_not_failed():
    rng = np.random.default_rng(1)
    scores = rng.random((200, N))
    ids, values = stored_top(scores, N)
    chosen, status = reproduce_selection(ids, values, K, N, "noaux_tc", GROUPS, KEEP)
    truth = np.array([rule(row.tolist(), "noaux_tc") for row in scores])
    corrupted = truth.copy()
    corrupted[5, 0] = next(e for e in range(N) if e not in truth[5])
    assert (chosen != np.sort(corrupted, axis=1)).any(axis=1).sum() == 1
    # An exact tie at the top-k boundary: the router may take either expert.
    tied = np.sort(rng.random(N))[::-1].copy()
    tied[K] = tied[K - 1]
    _, status = reproduce_selection(np.arange(N)[None], tied[None], K, N, "greedy")
    assert status[0] == TIE
