"""Token identity of every sense example's target, from one model's routing rows (its own tokenizer).

In a model that has learned nothing, routing at a token follows the token id and its neighbours; same-sense
examples share those more often than different-sense ones, so token identity is the first confound to
control (`controls.token_identity`) and one of the lexical baselines of the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.schema import SENSES

# Neighbour ids where the target starts or ends the routed text: a missing neighbour equals only itself.
NO_LEFT, NO_RIGHT = -1, -2
# Unknown position (an example without routed target).
NO_POSITION = -1
IDENTITY_FEATURES = ("same_target_ids", "same_target_form", "same_left_token", "same_right_token")


@dataclass
class TargetIdentity:
    """Per example: the target's token-id sequence, surface form and neighbour token ids."""

    ids: np.ndarray  # [E, M] target token ids in token order, padded with -1
    n_ids: np.ndarray  # [E] number of target tokens (0: no routed target)
    form: np.ndarray  # [E] surface-form code (from the senses text)
    left: np.ndarray  # [E] token id before the first target token, or NO_LEFT
    right: np.ndarray  # [E] token id after the last target token, or NO_RIGHT
    # [E] token_index of the first target token in its text (NO_POSITION without routed target)
    position: np.ndarray | None = None
    left2: np.ndarray | None = None  # [E] token id two positions before the first target token, or NO_LEFT
    right2: np.ndarray | None = None  # [E] token id two positions after the last target token, or NO_RIGHT

    def pair_features(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """`[P, 4]` bool: same target id sequence, same surface form, same left and same right neighbour."""
        same_ids = (self.n_ids[ia] == self.n_ids[ib]) & (self.ids[ia] == self.ids[ib]).all(axis=1)
        return np.column_stack(
            [
                same_ids,
                self.form[ia] == self.form[ib],
                self.left[ia] == self.left[ib],
                self.right[ia] == self.right[ib],
            ]
        )

    def pair_cells(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """`[P]` cell code 0..15 of the four indicators (bit 3: same ids, ..., bit 0: same right token)."""
        features = self.pair_features(ia, ib).astype(np.int64)
        return features @ (1 << np.arange(features.shape[1])[::-1])

    def neighbour_cells(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """`[P]` cell code 0..3 of (same left neighbour token id, same right neighbour token id) together."""
        return 2 * (self.left[ia] == self.left[ib]) + (self.right[ia] == self.right[ib]).astype(np.int64)


def target_identity(
    routing: pa.Table, example_ids: pa.Array, form: np.ndarray, corpus: str = SENSES
) -> TargetIdentity:
    """Token identity of the targets of `example_ids`, from the `corpus` rows (default `senses`) of one model's
    routing.

    Args:
        routing: routing rows with `source_id`, `corpus`, `token_index`, `token_id`, `is_target`.
        example_ids: `[E]` the examples, in corpus order.
        form: `[E]` surface-form codes of the examples.
    """
    n = len(example_ids)
    rows = routing.select(["source_id", "token_index", "token_id", "is_target"]).filter(
        pc.equal(routing.column("corpus"), corpus)
    )
    position = pc.fill_null(pc.index_in(rows.column("source_id"), value_set=example_ids), -1)
    position = position.to_numpy().astype(np.int64)
    keep = np.flatnonzero(position >= 0)
    token_index = rows.column("token_index").to_numpy()[keep].astype(np.int64)
    order = keep[np.lexsort((token_index, position[keep]))]
    example = position[order]
    index = rows.column("token_index").to_numpy()[order].astype(np.int64)
    token = rows.column("token_id").to_numpy()[order].astype(np.int64)
    target = rows.column("is_target").to_numpy(zero_copy_only=False)[order]

    at = np.flatnonzero(target)
    n_ids = np.bincount(example[at], minlength=n)
    width = max(1, int(n_ids.max()) if len(at) else 1)
    ids = np.full((n, width), -1, dtype=np.int64)
    left = np.full(n, NO_LEFT, dtype=np.int64)
    right = np.full(n, NO_RIGHT, dtype=np.int64)
    left2, right2 = left.copy(), right.copy()
    position_of = np.full(n, NO_POSITION, dtype=np.int64)
    if len(at):
        first = np.r_[True, example[at][1:] != example[at][:-1]]
        start = np.flatnonzero(first)
        rank = np.arange(len(at)) - np.repeat(start, np.diff(np.r_[start, len(at)]))
        ids[example[at], rank] = token[at]
        first_row, last_row = at[start], at[np.r_[start[1:], len(at)] - 1]
        owners = example[first_row]
        position_of[owners] = index[first_row]
        # A neighbour is the row `step` away only when it belongs to the same text and is that token.
        for step, out in ((1, left), (2, left2)):
            prev = first_row - step
            c = prev.clip(0)
            ok = (prev >= 0) & (example[c] == owners) & (index[c] == index[first_row] - step)
            out[owners[ok]] = token[prev[ok]]
        for step, out in ((1, right), (2, right2)):
            nxt = last_row + step
            c = nxt.clip(max=len(example) - 1)
            ok = (nxt < len(example)) & (example[c] == owners) & (index[c] == index[last_row] + step)
            out[owners[ok]] = token[nxt[ok]]
    return TargetIdentity(
        ids=ids,
        n_ids=n_ids,
        form=np.asarray(form, dtype=np.int64),
        left=left,
        right=right,
        position=position_of,
        left2=left2,
        right2=right2,
    )
