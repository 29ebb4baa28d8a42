"""The `sense-pairs` config: WiC-like pairs of examples of one lemma, same sense or different sense.

For each (lemma, pos) of `senses` with examples of two or more synsets, every unordered pair of its
examples is either *same sense* (both from one synset) or *different sense*. The lemma contributes
``n = min(#same, #different, max_pairs_per_lemma // 2)`` pairs of each kind, drawn without replacement
by a generator seeded from `seed` and a SHA-256 of ``"lemma.pos"``, so the classes are balanced per
lemma and a lemma's pairs do not change when other lemmas come or go. A lemma whose synsets each have a
single example has no same-sense pair and contributes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np
import pyarrow as pa

from atlas_build.atlas.schema import SENSE_PAIRS_SCHEMA
from atlas_build.corpora.senses import stable_hash


def build_sense_pairs(senses: pa.Table, max_pairs_per_lemma: int = 20, seed: int = 0) -> pa.Table:
    """Build the `sense-pairs` table (:data:`SENSE_PAIRS_SCHEMA`) from a `senses` table.

    Args:
        senses: the `senses` table (example_id, lemma, pos, synset are read).
        max_pairs_per_lemma: at most this many pairs per (lemma, pos), half same-sense, half different.
        seed: sampling seed; the same seed gives the same pairs.

    Returns:
        Rows sorted by (lemma, pos), then by (example_a, example_b), with example_a < example_b;
        pair_id is ``"{lemma}.{pos}|{i:03d}"``, i counting a lemma's pairs in that order.
    """
    if max_pairs_per_lemma < 0:
        raise ValueError(f"max_pairs_per_lemma must be >= 0, got {max_pairs_per_lemma}")
    by_lemma: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    columns = senses.select(["example_id", "lemma", "pos", "synset"]).to_pydict()
    for example_id, lemma, pos, synset in zip(
        columns["example_id"], columns["lemma"], columns["pos"], columns["synset"], strict=True
    ):
        by_lemma[(lemma, pos)].append((example_id, synset))

    rows = []
    for lemma, pos in sorted(by_lemma):
        examples = sorted(by_lemma[(lemma, pos)])
        if len({synset for _, synset in examples}) < 2:
            continue
        same, different = [], []
        for a, b in combinations(examples, 2):
            (same if a[1] == b[1] else different).append((a, b))
        n = min(len(same), len(different), max_pairs_per_lemma // 2)
        if n == 0:
            continue
        rng = np.random.default_rng(stable_hash("sense-pairs", seed, lemma, pos))
        chosen = [same[i] for i in rng.choice(len(same), size=n, replace=False)]
        chosen += [different[i] for i in rng.choice(len(different), size=n, replace=False)]
        for i, (a, b) in enumerate(sorted(chosen)):
            rows.append(
                {
                    "pair_id": f"{lemma}.{pos}|{i:03d}",
                    "lemma": lemma,
                    "pos": pos,
                    "example_a": a[0],
                    "example_b": b[0],
                    "synset_a": a[1],
                    "synset_b": b[1],
                    "same_sense": a[1] == b[1],
                }
            )
    return pa.Table.from_pylist(rows, schema=SENSE_PAIRS_SCHEMA)
