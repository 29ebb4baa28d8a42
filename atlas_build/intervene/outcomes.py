"""Outcomes of one intervention, their cluster bootstrap CI, the p-value against the random baseline, the verdict.

Per text (intervened minus clean, the same text; NaN where the outcome does not exist for it):

    next_token_logprob    log p(the token after the target) — the target's last token predicts it
    target_logprob        sum of log p(each target token | its prefix)
    downstream_identical  share of (token, later MoE layer) pairs whose expert set is unchanged, minus 1
                          (the layers after the intervened one; NaN at the last MoE layer)
    sense_probe           the margin of a nearest-centroid sense probe on the final hidden state of the
                          target's last token: cos(h, own sense) - max cos(h, other sense), centroids from
                          the clean states of the lemma's other texts (leave-one-out); NaN for a lemma with
                          one sense, or a sense with one text

Every outcome is signed so that a disruption is negative. The effect is the mean over texts; its 95% CI
resamples clusters (lemmas when the texts span at least MIN_LEMMA_CLUSTERS lemmas, else texts: the unit is
recorded). The baseline draws give the same statistic over the same texts; the one-sided p-value is
(1 + #draws at or below the effect) / (1 + draws). A row survives when its CI lies below 0 and p <= alpha /
(the plan's hypothesis x intervention count); a hypothesis survives when the primary outcome of one of
its interventions does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas_build.intervene.plan import OUTCOMES

MIN_LEMMA_CLUSTERS = 5
CONFIDENCE = 0.95


def text_outcomes(clean, hit, targets: np.ndarray, slot: int) -> dict[str, float]:
    """The per-text changes of the three outcomes read from one text's clean and intervened rows."""
    out = {}
    n = len(clean.logprobs) + 1
    last = int(targets[-1]) if len(targets) else -1
    out["next_token_logprob"] = (
        float(hit.logprobs[last] - clean.logprobs[last]) if 0 <= last < n - 1 else np.nan
    )
    predicted = [int(t) - 1 for t in targets if t >= 1]
    out["target_logprob"] = (
        float(hit.logprobs[predicted].sum() - clean.logprobs[predicted].sum()) if predicted else np.nan
    )
    later = clean.experts[:, slot + 1 :]
    if later.shape[1]:
        # Sets, not orders: a changed weight can reorder the same experts.
        same = (np.sort(hit.experts[:, slot + 1 :], axis=-1) == np.sort(later, axis=-1)).all(axis=-1)
        out["downstream_identical"] = float(same.mean() - 1.0)
    else:
        out["downstream_identical"] = np.nan
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-30)


def probe_margins(hidden: np.ndarray, senses: list[str], own: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Nearest-centroid margins of `hidden` `[n, H]` (rows of the lemma texts `own` indexes into `clean`).

    Args:
        hidden: states to score, one per text of the population.
        senses: the sense of every clean text of the lemma.
        own: for each row of `hidden`, its index in `clean` (left out of its own centroid).
        clean: the clean states `[m, H]` of all the lemma's texts.
    """
    labels = np.asarray(senses)
    unit = _unit(clean)
    out = np.full(len(hidden), np.nan)
    distinct = sorted(set(senses))
    if len(distinct) < 2:
        return out
    h = _unit(hidden)
    for i, j in enumerate(own):
        sims = {}
        for sense in distinct:
            members = labels == sense
            members[j] = False
            if not members.any():
                break
            centroid = _unit(unit[members].mean(axis=0))
            sims[sense] = float(h[i] @ centroid)
        else:
            mine = labels[j]
            out[i] = sims[mine] - max(v for s, v in sims.items() if s != mine)
    return out


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, resamples: int, rng) -> tuple[float, float]:
    """Percentile CI of the mean over texts, resampling whole clusters with replacement."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    picks = rng.integers(0, len(ids), size=(resamples, len(ids)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@dataclass
class OutcomeStats:
    outcome: str
    n_texts: int
    n_clusters: int
    cluster_unit: str
    effect: float
    ci_low: float
    ci_high: float
    baseline_mean: float
    baseline_sd: float
    p_value: float
    survives: bool


def summarise(
    outcome: str,
    hypothesis: np.ndarray,
    baseline: np.ndarray,
    lemmas: list[str],
    resamples: int,
    alpha: float,
    rng,
) -> OutcomeStats | None:
    """The statistics of one outcome: `hypothesis` `[n]` per-text changes, `baseline` `[draws, n]` (the same
    texts under each draw). None when no text has the outcome."""
    keep = ~np.isnan(hypothesis) & ~np.isnan(baseline).any(axis=0)
    if not keep.any():
        return None
    values, draws = hypothesis[keep], baseline[:, keep]
    kept_lemmas = np.asarray(lemmas)[keep]
    by_lemma = len(set(kept_lemmas.tolist())) >= MIN_LEMMA_CLUSTERS
    clusters = kept_lemmas if by_lemma else np.arange(len(values))
    effect = float(values.mean())
    low, high = cluster_bootstrap(values, clusters, resamples, rng)
    base = draws.mean(axis=1)
    p = float((1 + np.sum(base <= effect)) / (1 + len(base)))
    return OutcomeStats(
        outcome=outcome,
        n_texts=int(keep.sum()),
        n_clusters=int(len(np.unique(clusters))),
        cluster_unit="lemma" if by_lemma else "text",
        effect=effect,
        ci_low=low,
        ci_high=high,
        baseline_mean=float(base.mean()),
        baseline_sd=float(base.std(ddof=1)) if len(base) > 1 else 0.0,
        p_value=p,
        survives=bool(high < 0 and p <= alpha),
    )


__all__ = ["OUTCOMES", "OutcomeStats", "cluster_bootstrap", "probe_margins", "summarise", "text_outcomes"]
