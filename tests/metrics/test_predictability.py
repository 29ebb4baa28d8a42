"""Routing predictability on planted routing: each predictor must recover the routing made of its own input,
and stay near chance on routing made of something else. Accuracies are recomputed here independently."""

from __future__ import annotations

import numpy as np

from atlas_build.metrics.estimators.predictability import routing_predictability
from atlas_build.metrics.estimators.senses import BootstrapOptions

OPTIONS = BootstrapOptions(n_resamples=300, seed=3)
N_EXPERTS, K, N_LAYERS, DIM = 16, 2, 3, 12


def texts(rng, n_texts=300, length=8):
    text = np.repeat(np.arange(n_texts), length)
    token_ids = rng.integers(0, 40, len(text))
    return text, token_ids


def top_k(scores):
    return np.argsort(-scores, axis=-1, kind="stable")[..., :K]


def test_routing_of_the_router_input_is_predicted_from_it():
    rng = np.random.default_rng(0)
    text, token_ids = texts(rng)
    x = rng.standard_normal((len(text), N_LAYERS, DIM))
    w = rng.standard_normal((N_LAYERS, DIM, N_EXPERTS))
    experts = top_k(np.einsum("tld,lde->tle", x, w))  # the router: a linear map of its input
    out = routing_predictability(experts, token_ids, text, N_EXPERTS, [1, 2, 3], OPTIONS, x, [1, 2, 3])
    router = out["accuracy"]["router_input"]
    # Near-ties between the k-th and (k+1)-th logit are what a fit on 1,920 tokens misses (~0.9 here).
    assert min(router["estimate"]) > 0.85
    chance = K / N_EXPERTS
    assert out["chance"] == chance
    # Token ids and the previous layer carry nothing here: near chance, far below the router input.
    assert max(out["accuracy"]["token"]["ci_low"]) < 0.3
    assert out["accuracy"]["previous"]["estimate"][0] is None
    assert max(v for v in out["accuracy"]["previous"]["ci_low"] if v is not None) < 0.3


def test_routing_of_the_token_and_of_the_previous_layer():
    rng = np.random.default_rng(1)
    text, token_ids = texts(rng)
    table = np.stack([rng.permutation(N_EXPERTS)[:K] for _ in range(40)])  # token id -> its experts
    first = table[token_ids]
    second = (first + 5) % N_EXPERTS  # layer 2: a function of layer 1's experts
    experts = np.stack([first, second], axis=1)
    out = routing_predictability(experts, token_ids, text, N_EXPERTS, [3, 4], OPTIONS)
    assert out["accuracy"]["router_input"] is None
    token = out["accuracy"]["token"]
    assert min(token["estimate"]) > 0.95
    assert out["accuracy"]["previous"]["estimate"][1] > 0.95
    # Recomputed here: the held-out texts are those the estimator did not fit on; with a deterministic
    # token -> experts table every seen token is predicted exactly, so the accuracy is the share of held-out
    # tokens whose id was seen in training (plus chance-level hits on unseen ones, bounded by 1).
    n_test = out["n_tokens_test"]
    assert n_test == round(0.2 * 300) * 8
    assert token["ci_low"][0] <= token["estimate"][0] <= token["ci_high"][0]
