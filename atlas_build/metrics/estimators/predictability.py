"""Routing predictability: how well a token's experts at MoE layer L are predicted, on held-out texts, from

    (a) token         its token id and its two neighbours' ids (left, right)
    (b) router_input  its stored router input at L (atlases built with `--router-inputs`; null elsewhere)
    (c) previous      its experts at the MoE layer before L (null at the first MoE layer)

The one-layer-ahead predictability the OLMoE analysis reports, and the baseline RouterInterp-style work
compares with. Each predictor scores every expert and predicts its k best; the accuracy of a token-layer is
the share of its k experts predicted, |predicted ∩ experts| / k (chance: k / N). Fitted on a seeded 80% of the
texts, measured on the other 20%; 95% CIs from a cluster bootstrap over the held-out texts (`stats`).

    token, previous   naive Bayes over count tables, add-one smoothed: log P(e) + Σ_f log P(f | e), with f
                      the three token ids (a) or the k experts at L−1 (c); P(e) the train share of
                      token-layers routed to e (float64)
    router_input      softmax (multinomial logistic) read-out of the experts from [x, 1], L-BFGS in float64:
                      linear, as the router itself is (its logits are a linear map of its input; a JL
                      projection of it keeps most of that map)

Texts are sampled (at most `max_texts`, seeded) to bound the memory of the count tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.metrics.estimators.senses import BootstrapOptions, interval
from atlas_build.metrics.estimators.stats import ClusterIndex, cluster_bootstrap

PREDICTORS = ("token", "router_input", "previous")
HOLDOUT = 0.2
MAX_TEXTS = 1000  # bounds memory ([tokens, N] float64 per layer) and the read-out fits (one per layer)
RIDGE = 1e-4  # L2 penalty of the softmax read-out (per weight, on standardised inputs)
MAX_ITER = 150
ALPHA = 1.0  # add-one smoothing of the count tables


def khot(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """`[T, k]` ids -> float64 `[T, N]` indicator."""
    out = np.zeros((len(experts), n_experts))
    np.put_along_axis(out, experts.astype(np.int64), 1.0, axis=1)
    return out


def naive_bayes_scores(
    features: list[np.ndarray], target: np.ndarray, train: np.ndarray, n_experts: int
) -> np.ndarray:
    """Scores `[T, N]`: log P(e) + Σ_f log P(feature_f | e), counts over the `train` rows (each token-layer
    counts once per expert of its k). `features`: integer `[T]` arrays; `target`: k-hot `[T, N]`."""
    prior = target[train].sum(axis=0) + ALPHA
    scores = np.log(prior / prior.sum())[None, :].repeat(len(target), axis=0)
    per_expert = target[train].sum(axis=0)
    for values in features:
        levels, codes = np.unique(values, return_inverse=True)
        codes = codes.reshape(-1)
        counts = np.zeros((len(levels), n_experts))
        np.add.at(counts, codes[train], target[train])
        # P(f = v | e), add-one over the feature's levels.
        scores += np.log((counts[codes] + ALPHA) / (per_expert + ALPHA * len(levels))[None, :])
    return scores


def linear_scores(
    x: np.ndarray, target: np.ndarray, train: np.ndarray, max_iter: int = MAX_ITER
) -> np.ndarray:
    """Scores `[T, N]` of a softmax read-out of the experts from `[x, 1]`, fitted on `train` (float64).

    Cross-entropy against the k-hot target spread evenly over its k experts, L2 penalty `RIDGE`, L-BFGS
    (scipy) from zero, inputs standardised on the train rows. A router whose logits are a linear map of its
    input is recovered: its top-k is the top-k of some linear scores, which this fit approaches."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    x = np.asarray(x, dtype=np.float64)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    design = np.column_stack([(x - mean) / np.where(std > 0, std, 1.0), np.ones(len(x))])
    fit, goal = design[train], target[train] / target[train].sum(axis=1, keepdims=True)
    d, n_experts = design.shape[1], target.shape[1]

    def loss(w):
        weights = w.reshape(d, n_experts)
        logits = fit @ weights
        value = -(goal * log_softmax(logits, axis=1)).sum() / len(fit) + RIDGE / 2 * (weights**2).sum()
        grad = fit.T @ (softmax(logits, axis=1) - goal) / len(fit) + RIDGE * weights
        return value, grad.reshape(-1)

    result = minimize(
        loss, np.zeros(d * n_experts), jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    return design @ result.x.reshape(d, n_experts)


def overlap_of(scores: np.ndarray, experts: np.ndarray) -> np.ndarray:
    """`[T]` share of each token's k experts among the k best-scored (ties: lower id)."""
    k = experts.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = (order[:, :, None] == experts[:, None, :].astype(np.int64)).any(axis=2)
    return hits.sum(axis=1) / k


def routing_predictability(
    experts: np.ndarray,
    token_ids: np.ndarray,
    text: np.ndarray,
    n_experts: int,
    moe_layers: list[int],
    options: BootstrapOptions,
    router_inputs: np.ndarray | None = None,
    input_layers: list[int] | None = None,
    holdout: float = HOLDOUT,
) -> dict:
    """Held-out accuracy per MoE layer and predictor, with CIs (see the module docstring).

    Args:
        experts: `[T, L, k]` expert ids; rows ordered by text, then token index.
        token_ids: `[T]`; text: `[T]` integer text code (rows of a text contiguous, in order).
        router_inputs: `[T, n, D]` stored router inputs at `input_layers` (decoder layers), or None.

    Returns:
        `{"predictors", "layers", "chance", "n_texts_train", "n_texts_test", "n_tokens_test",
        "accuracy": {predictor: interval[L] with None where not computed}, "method"}`.
    """
    experts = np.asarray(experts)
    n_tokens, n_layers, k = experts.shape
    first = np.r_[True, text[1:] != text[:-1]] if n_tokens else np.zeros(0, bool)
    last = np.r_[text[1:] != text[:-1], True] if n_tokens else np.zeros(0, bool)
    left = np.where(first, -1, np.roll(token_ids, 1))
    right = np.where(last, -2, np.roll(token_ids, -1))
    texts, text_code = np.unique(text, return_inverse=True)
    rng = np.random.default_rng(options.seed + 11)
    test_texts = rng.permutation(len(texts))[: max(1, int(round(holdout * len(texts))))]
    is_test = np.isin(text_code, test_texts)
    train = np.flatnonzero(~is_test)
    test = np.flatnonzero(is_test)
    columns = {}
    for layer in range(n_layers):
        target = khot(experts[:, layer], n_experts)
        columns["token", layer] = overlap_of(
            naive_bayes_scores([token_ids, left, right], target, train, n_experts)[test], experts[test, layer]
        )
        if layer > 0:
            previous = [experts[:, layer - 1, j].astype(np.int64) for j in range(k)]
            columns["previous", layer] = overlap_of(
                naive_bayes_scores(previous, target, train, n_experts)[test], experts[test, layer]
            )
        if router_inputs is not None and moe_layers[layer] in (input_layers or []):
            x = router_inputs[:, list(input_layers).index(moe_layers[layer])]
            columns["router_input", layer] = overlap_of(
                linear_scores(x, target, train)[test], experts[test, layer]
            )
    keys = list(columns)
    test_code = np.unique(text_code[test], return_inverse=True)[1].reshape(-1)
    n_test = int(test_code.max()) + 1 if len(test) else 0
    index = ClusterIndex(test_code, n_test)
    sums = index.sums(np.column_stack([np.ones(len(test)), *[columns[key] for key in keys]]))

    def estimator(t):
        with np.errstate(invalid="ignore", divide="ignore"):
            return t[..., 1:] / t[..., :1]

    est, low, high = cluster_bootstrap(
        sums,
        estimator,
        n_resamples=options.n_resamples,
        confidence=options.confidence,
        seed=options.seed + 12,
    )
    accuracy = {}
    for name in PREDICTORS:
        values = [[None] * n_layers for _ in range(3)]
        for i, key in enumerate(keys):
            if key[0] == name:
                for slot, arr in enumerate((est, low, high)):
                    values[slot][key[1]] = float(arr[i])
        accuracy[name] = None if all(v is None for v in values[0]) else interval(*values)
    return {
        "method": "held-out share of a token's k experts among a predictor's k best (see predictability.py)",
        "predictors": list(PREDICTORS),
        "layers": list(moe_layers),
        "chance": k / n_experts,
        "n_texts_train": int(len(texts) - len(test_texts)),
        "n_texts_test": int(len(test_texts)),
        "n_tokens_test": int(len(test)),
        "accuracy": accuracy,
    }


def atlas_predictability(
    src, row: dict, options: BootstrapOptions, max_texts: int = MAX_TEXTS
) -> dict | None:
    """`routing_predictability` of one model of an atlas source, over at most `max_texts` seeded texts."""
    from atlas_build.atlas.routing import routing_array
    from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN, ROUTING_PREFIX

    stored = bool(row.get("router_input_layers"))
    columns = ["source_id", "corpus", "token_index", "token_id", "experts"]
    table = src.table(
        ROUTING_PREFIX + row["model_slug"], columns=columns + ([ROUTER_INPUTS_COLUMN] if stored else [])
    )
    if table is None or table.num_rows == 0:
        return None
    key = pc.binary_join_element_wise(table.column("corpus"), table.column("source_id"), "\x1f")
    names, text = np.unique(
        np.asarray(key.to_numpy(zero_copy_only=False), dtype=object).astype(str), return_inverse=True
    )
    text = text.reshape(-1)
    if len(names) > max_texts:
        keep = np.random.default_rng(options.seed + 13).permutation(len(names))[:max_texts]
        rows = np.flatnonzero(np.isin(text, keep))
        table, text = table.take(pa.array(rows)), text[rows]
    order = np.lexsort((table.column("token_index").to_numpy(), text))
    table, text = table.take(pa.array(order)), text[order]
    if len(np.unique(text)) < 5:
        return None
    return routing_predictability(
        routing_array(table.column("experts")),
        table.column("token_id").to_numpy().astype(np.int64),
        text,
        int(row["n_routed_experts"]),
        list(row["moe_layers"]),
        options,
        routing_array(table.column(ROUTER_INPUTS_COLUMN)).astype(np.float64) if stored else None,
        list(row["router_input_layers"]) if stored else None,
    )
