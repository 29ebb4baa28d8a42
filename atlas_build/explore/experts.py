"""The expert pages' data: per model and MoE layer, what the senses' target tokens routed to each expert are.

One file per (model, layer), `data/models/<slug>/experts-<l>.js`, counted over every target sub-token row
of the senses corpus (`AtlasContent.routing`): for each expert that any of them chose, how many rows chose
it, its lemmas, senses ([lemma index, sense key, rows, the
sense's rows]) and decoded tokens with the most rows, and example rows (the page links them). A
sense's `share` is its rows that chose the expert over all its rows: the expert's selectivity across
senses, next to the entropy of its hits over senses.
"""

from __future__ import annotations

import numpy as np

from atlas_build.explore.encode import decode_token
from atlas_build.explore.read import AtlasContent, TargetRouting

TOP = 10  # lemmas, senses, tokens and examples listed per expert


def _row_keys(content: AtlasContent, target: TargetRouting) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per routing row: lemma index, global sense id (lemma-major) and sense rows' total per sense id."""
    n = len(target.example)
    lemma_of = np.repeat(np.arange(len(content.lemmas)), np.diff(target.lemma_bounds))
    sense_base, example_sense = [], []
    base = 0
    for lemma in content.lemmas:
        sense_base.append(base)
        example_sense.append(
            np.array([si for si, sense in enumerate(lemma.senses) for _ in sense.examples], dtype=np.int64)
        )
        base += len(lemma.senses)
    sense_of = np.empty(n, dtype=np.int64)
    for i in range(len(content.lemmas)):
        rows = target.lemma_slice(i)
        sense_of[rows] = sense_base[i] + example_sense[i][target.example[rows]]
    totals = np.bincount(sense_of, minlength=base)
    return lemma_of, sense_of, totals


def expert_layers(content: AtlasContent, slug: str) -> list[dict]:
    """One dict per MoE layer index: {"layer_index", "experts": {e: {...}}} (see the module docstring)."""
    target = content.routing[slug]
    if not len(target.example):
        return []
    lemma_of, sense_of, totals = _row_keys(content, target)
    # Lemma index and sense index within the lemma of each global sense id.
    sense_lemma = np.repeat(np.arange(len(content.lemmas)), [len(lemma.senses) for lemma in content.lemmas])
    sense_local = np.array(
        [sense.sense_key for lemma in content.lemmas for sense in lemma.senses], dtype=object
    )
    texts = np.array([(decode_token(t) or "") for t in target.tokens], dtype=object)
    n_rows, n_layers, k = target.experts.shape
    out = []
    for li in range(n_layers):
        chosen = target.experts[:, li, :].astype(np.int64).ravel()
        rows = np.repeat(np.arange(n_rows), k)
        order = np.argsort(chosen, kind="stable")
        chosen, rows = chosen[order], rows[order]
        starts = np.flatnonzero(np.r_[True, chosen[1:] != chosen[:-1]])
        ends = np.r_[starts[1:], len(chosen)]
        experts = {}
        for a, b in zip(starts, ends, strict=True):
            hit = np.unique(rows[a:b])
            experts[str(int(chosen[a]))] = _expert(
                hit, lemma_of, sense_of, totals, sense_lemma, sense_local, texts, target
            )
        out.append({"layer_index": li, "n_rows": int(n_rows), "experts": experts})
    return out


def _top(values: np.ndarray) -> list[tuple]:
    keys, counts = np.unique(values, return_counts=True)
    order = np.lexsort((keys, -counts))[:TOP]
    return [(keys[i], int(counts[i])) for i in order]


def _expert(hit, lemma_of, sense_of, totals, sense_lemma, sense_local, texts, target) -> dict:
    senses = sense_of[hit]
    _, per_sense = np.unique(senses, return_counts=True)
    p = per_sense / per_sense.sum()
    return {
        "rows": int(len(hit)),
        "lemmas": [[int(i), c] for i, c in _top(lemma_of[hit])],
        "senses": [[int(sense_lemma[s]), str(sense_local[s]), c, int(totals[s])] for s, c in _top(senses)],
        "n_senses": int(len(per_sense)),
        "sense_entropy_bits": round(float(-(p * np.log2(p)).sum()), 6),
        "tokens": [[str(t), c] for t, c in _top(texts[hit])],
        # Example rows: [lemma index, example index within the lemma, token index].
        "examples": [
            [int(lemma_of[r]), int(target.example[r]), int(target.token_index[r])] for r in hit[:TOP]
        ],
    }
