"""The `scores-reproduce-experts` check: the model's own selection rule, applied to the stored selection
scores (`atlas build --scores M`), gives back the stored `experts`.

Rules, from the models row (`topk_method`, `n_group`, `topk_group`):

    greedy                 E = top-k of the scores
    group_limited_greedy   group score = max score in the group (DeepSeek-V2); keep the topk_group best groups;
                           E = top-k of the scores in the kept groups
    noaux_tc               group score = sum of the 2 best scores in the group (DeepSeek-V3/R1); then as above

Only the top M scores are stored, so a row (token, layer) is *decided* when they fix the answer: every kept
group's score is known and beats every other group's bound, and the kept groups hold at least k stored
experts (an unstored expert scores below the M-th stored score). Rows with an exact tie at a boundary are
*ties* (the router may take either side). Decided rows must reproduce `experts` exactly; undecided rows and
ties are counted and reported, never failed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas_build.atlas.routing import routing_array
from validation.ledger import Ledger
from validation.reading import iter_batches, require
from validation.rules import BATCH_ROWS

CHECK = "scores-reproduce-experts"
DESCRIPTION = (
    "with --scores: the model's selection rule (top-k; n_group / topk_group group limits) applied to the "
    "stored top-M selection scores gives back `experts` on every token-layer the M scores decide"
)
DECIDED, UNDECIDED, TIE = 0, 1, 2
# Token-layer rows per `reproduce_selection` call: bounds its `[rows, M, n_group]` one-hot.
ROWS_PER_CALL = 1 << 16


def reproduce_selection(
    score_ids: np.ndarray,
    scores: np.ndarray,
    top_k: int,
    n_experts: int,
    topk_method: str,
    n_group: int | None = None,
    topk_group: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The experts the rule picks from the stored top-M of every row.

    Args:
        score_ids, scores: `[R, M]` expert ids and selection scores, highest score first.

    Returns:
        `(chosen [R, k] int64 sorted ascending, status [R])` with status DECIDED, UNDECIDED or TIE (chosen
        is meaningful for DECIDED rows only).
    """
    ids = np.asarray(score_ids, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)
    rows, m = ids.shape
    grouped = topk_method in ("group_limited_greedy", "noaux_tc") and n_group and topk_group
    status = np.full(rows, DECIDED, dtype=np.int8)
    floor = values[:, -1:]  # an unstored expert scores below this (strictly, up to ties)
    complete = m >= n_experts
    if grouped:
        size = n_experts // n_group
        group = ids // size
        onehot = group[:, :, None] == np.arange(n_group)[None, None, :]  # [R, M, G]
        rank = np.take_along_axis(np.cumsum(onehot, axis=1), group[:, :, None], axis=2)[:, :, 0] - 1
        first = np.full((rows, n_group), np.nan)
        second = np.full((rows, n_group), np.nan)
        r_idx = np.repeat(np.arange(rows), m).reshape(rows, m)
        first[r_idx[rank == 0], group[rank == 0]] = values[rank == 0]
        second[r_idx[rank == 1], group[rank == 1]] = values[rank == 1]
        # A group's score is known when its deciding members are stored; else it is bounded above by
        # the floor standing in for the missing ones.
        if topk_method == "noaux_tc":
            exact = ~np.isnan(second) | complete
            bound = np.where(np.isnan(first), floor, first) + np.where(np.isnan(second), floor, second)
        else:
            exact = ~np.isnan(first) | complete
            bound = np.where(np.isnan(first), floor, first)
        order = np.argsort(-bound, axis=1, kind="stable")
        kept = order[:, :topk_group]
        kth = np.take_along_axis(bound, kept[:, -1:], axis=1)[:, 0]
        rest = (
            np.take_along_axis(bound, order[:, topk_group:], axis=1).max(axis=1)
            if topk_group < n_group
            else np.full(rows, -np.inf)
        )
        kept_exact = np.take_along_axis(exact, kept, axis=1).all(axis=1)
        status[~kept_exact | (kth < rest)] = UNDECIDED
        status[(status == DECIDED) & (kth == rest)] = TIE
        in_kept = (group[:, :, None] == kept[:, None, :]).any(axis=2)
    else:
        in_kept = np.ones((rows, m), dtype=bool)
    # The top-k of the stored scores inside the kept groups (stored order is by score already).
    position = np.cumsum(in_kept, axis=1)
    enough = position[:, -1] >= top_k
    if not complete:
        status[(status == DECIDED) & ~enough] = UNDECIDED
    take = in_kept & (position <= top_k)
    chosen = np.zeros((rows, top_k), dtype=np.int64)
    ok = take.sum(axis=1) == top_k
    chosen[ok] = ids[ok][take[ok]].reshape(-1, top_k)
    # A tie between the last taken and the first left-out stored expert of the kept groups. (When no
    # stored expert is left out, the first left-out is unstored and scores below the floor.)
    last = np.where(take, values, np.inf).min(axis=1)
    first_out = np.where(in_kept & (position > top_k), values, -np.inf).max(axis=1)
    status[(status == DECIDED) & (last == first_out)] = TIE
    return np.sort(chosen, axis=1), status


def check_scores(
    config: str, files: list[Path], model: dict, ledger: Ledger, batch_rows: int = BATCH_ROWS
) -> None:
    """Record `scores-reproduce-experts` for one routing config (declared only when it stores scores)."""
    ledger.declare(config, CHECK)
    top_k, n_experts = int(model["top_k"]), int(model["n_routed_experts"])
    layers = list(model["moe_layers"])
    counts = {"decided": 0, "undecided": 0, "ties": 0}
    for batch in iter_batches(
        files, ["source_id", "token_index", "experts", "score_experts", "scores"], batch_rows
    ):
        require(batch, ["experts", "score_experts", "scores"], config)
        if batch.column("scores").null_count:
            ledger.fail(config, CHECK, [f"{batch.column('scores').null_count} row(s) with null scores"])
            return
        experts = routing_array(batch.column("experts")).astype(np.int64)
        ids = routing_array(batch.column("score_experts"))
        values = routing_array(batch.column("scores"))
        n, n_layers, m = ids.shape
        flat_ids, flat_values = ids.reshape(-1, m), values.reshape(-1, m)
        parts = [
            reproduce_selection(
                flat_ids[lo : lo + ROWS_PER_CALL],
                flat_values[lo : lo + ROWS_PER_CALL],
                top_k,
                n_experts,
                model["topk_method"],
                model.get("n_group"),
                model.get("topk_group"),
            )
            for lo in range(0, len(flat_ids), ROWS_PER_CALL)
        ]
        chosen = np.concatenate([c for c, _ in parts]) if parts else np.zeros((0, top_k), np.int64)
        status = np.concatenate([s for _, s in parts]) if parts else np.zeros(0, np.int8)
        stored = np.sort(experts.reshape(-1, top_k), axis=1)
        decided = status == DECIDED
        wrong = decided & (chosen != stored).any(axis=1)
        counts["decided"] += int(decided.sum())
        counts["undecided"] += int((status == UNDECIDED).sum())
        counts["ties"] += int((status == TIE).sum())
        ledger.count(
            config, CHECK, "decided token-layers reproduce experts", int(decided.sum()), int(wrong.sum())
        )
        if wrong.any() and ledger.wants_examples(config, CHECK):
            source = batch.column("source_id").to_pylist()
            index = batch.column("token_index").to_pylist()
            ledger.add_examples(
                config,
                CHECK,
                (
                    f"{source[r // n_layers]!r} token {index[r // n_layers]} layer {layers[r % n_layers]}: "
                    f"experts {stored[r].tolist()}, the rule on the stored scores gives {chosen[r].tolist()}"
                    for r in np.flatnonzero(wrong)[:20]
                ),
            )
    ledger.declare(config, CHECK, **counts)
