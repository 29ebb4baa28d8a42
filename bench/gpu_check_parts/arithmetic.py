"""The router's arithmetic (DeepSeek-V3 / R1, as the deepseek_v3 row of atlas_build/routers/families.py), margins, agreement."""

from __future__ import annotations

import os

# Offline before transformers is imported: nothing may come from the hub, here or on the GPU machine.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402 - after the offline switches above


def router_choice(scores, bias, n_group: int, topk_group: int, top_k: int):
    """The experts a DeepSeek-V3 router picks from its sigmoid scores: group-limited top-k of score + bias.

    The same float32 operations as transformers' `DeepseekV3TopkRouter`, on the tensors' own device, so
    that it reproduces the router's choice bit for bit from the recorded logits.

    Args:
        scores: float32 `[..., N]` sigmoid scores.
        bias: float32 `[N]` or broadcastable, `e_score_correction_bias`.

    Returns:
        int64 `[..., top_k]` expert ids, in no particular order.
    """
    import torch

    choice = scores + bias
    n = choice.shape[-1]
    grouped = choice.reshape(*choice.shape[:-1], n_group, n // n_group)
    group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    kept = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(-1, kept, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape).bool()
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    return torch.topk(masked, k=top_k, dim=-1, sorted=False)[1]


def selection_margins(scores, bias, n_group: int, topk_group: int, top_k: int):
    """How far the reference's choice is from changing, per routing decision.

    Args:
        scores: float32 `[..., N]` sigmoid scores of the reference; bias: float32 `[N]` (broadcastable).

    Returns:
        `(set_margin, top1_margin)`, float64 `[...]`. `set_margin` is the smallest uniform perturbation of
        the choice scores (score + bias) that can change the expert set: min(expert gap / 2, group gap / 4),
        where the expert gap is between the k-th and (k+1)-th choice score of the kept groups and the group
        gap between the last kept and the first dropped group score (each a sum of two choice scores, so a
        perturbation d moves it by up to 2d). `top1_margin` is half the gap between the two highest scores
        of the chosen experts (the gate weights' order, so the top-1), the perturbation that can swap them.
        Infinite where no swap is possible (all groups kept, or no expert left out of the kept groups).
    """
    import torch

    choice = (scores + bias).double()  # the gaps of the float32 choice scores, computed exactly
    n = choice.shape[-1]
    grouped = choice.reshape(*choice.shape[:-1], n_group, n // n_group)
    group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    inf = torch.full(choice.shape[:-1], float("inf"), dtype=torch.float64)
    if topk_group < n_group:
        best_groups = group_scores.topk(topk_group + 1, dim=-1)[0]
        group_gap = best_groups[..., topk_group - 1] - best_groups[..., topk_group]
    else:
        group_gap = inf
    kept = group_scores.topk(topk_group, dim=-1)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(-1, kept, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape).bool()
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    if top_k < topk_group * (n // n_group):
        best = masked.topk(top_k + 1, dim=-1)[0]
        expert_gap = best[..., top_k - 1] - best[..., top_k]
    else:
        expert_gap = inf
    chosen = masked.topk(top_k, dim=-1)[1]
    chosen_scores = scores.double().gather(-1, chosen).topk(min(2, top_k), dim=-1)[0]
    top1_margin = (chosen_scores[..., 0] - chosen_scores[..., 1]) / 2 if top_k > 1 else inf
    return torch.minimum(expert_gap / 2, group_gap / 4), top1_margin


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[..., k]` id arrays -> bool `[...]`: the same k experts, in any order."""
    return (np.sort(a, axis=-1) == np.sort(b, axis=-1)).all(axis=-1)


def upstream_of(differs: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """bool `[T, L]`: some expert set differs upstream of (token, MoE layer): in an earlier MoE layer, at
    this token or an earlier one of the same text (causal attention carries it there).

    Args:
        differs: bool `[T, L]` set differences, tokens of consecutive texts concatenated.
        token_counts: int `[texts]`, tokens per text (summing to T).
    """
    out = np.zeros_like(differs)
    start = 0
    for count in token_counts:
        block = differs[start : start + count]
        seen = np.logical_or.accumulate(block, axis=0)  # any difference at this token or before, per layer
        out[start : start + count, 1:] = np.logical_or.accumulate(seen, axis=1)[:, :-1]
        start += count
    return out


def summarize_agreement(
    reference: np.ndarray,
    candidate: np.ndarray,
    token_counts: np.ndarray,
    set_margin: np.ndarray,
    top1_margin: np.ndarray,
    choice_noise: np.ndarray,
    score_noise: np.ndarray,
    top1_score: np.ndarray,
) -> dict:
    """Agreement of a run's experts with the reference's, and whether each difference is a near tie.

    Args:
        reference, candidate: int `[T, L, k]` experts, highest gate weight first.
        token_counts: int `[texts]`.
        set_margin, top1_margin: float64 `[T, L]`, the reference's margins (`selection_margins`).
        choice_noise, score_noise: float64 `[T, L]`, max over experts of |candidate - reference| of the
            choice scores (score + bias) and of the scores.
        top1_score: float64 `[T, L]`, the reference's highest chosen score (a float32 rounding step of it
            is the tolerance of a top-1 tie: equal float32 gate weights keep the router's order).

    Returns:
        The figures of the results JSON (see the module docstring); `all_primary_explained` is True when
        every primary difference has margin <= noise.
    """
    positions = int(reference.shape[0] * reference.shape[1])
    set_same = same_sets(reference, candidate)
    top1_same = reference[..., 0] == candidate[..., 0]
    differs = ~set_same
    upstream = upstream_of(differs, token_counts)
    primary_set = differs & ~upstream
    set_explained = primary_set & (set_margin <= choice_noise)
    top1_tolerance = score_noise + np.spacing(top1_score.astype(np.float32)).astype(np.float64)
    primary_top1 = ~top1_same & set_same & ~upstream
    top1_explained = primary_top1 & (top1_margin <= top1_tolerance)
    overlap = (reference[..., :, None] == candidate[..., None, :]).any(-1).mean(-1)
    clean = ~upstream  # positions whose inputs saw no routing difference: their noise is rounding alone
    noise = choice_noise[clean]
    n_primary = int(primary_set.sum() + primary_top1.sum())
    n_explained = int(set_explained.sum() + top1_explained.sum())
    primary_margins = np.concatenate([set_margin[primary_set], top1_margin[primary_top1]])
    worst = np.where(primary_set, set_margin - choice_noise, -np.inf)
    return {
        "positions": positions,
        "same_expert_set": float(set_same.mean()) if positions else 1.0,
        "same_top1": float(top1_same.mean()) if positions else 1.0,
        "mean_expert_overlap": float(overlap.mean()) if positions else 1.0,
        "set_differences": int(differs.sum()),
        "primary_set_differences": int(primary_set.sum()),
        "primary_set_explained": int(set_explained.sum()),
        "downstream_set_differences": int((differs & upstream).sum()),
        "top1_differences": int((~top1_same).sum()),
        "top1_differences_with_set_change": int((~top1_same & differs).sum()),
        "primary_top1_differences": int(primary_top1.sum()),
        "primary_top1_explained": int(top1_explained.sum()),
        "downstream_top1_differences": int((~top1_same & set_same & upstream).sum()),
        "primary_differences": n_primary,
        "primary_explained": n_explained,
        "all_primary_explained": n_explained == n_primary,
        "max_margin_of_a_primary_difference": float(primary_margins.max()) if primary_margins.size else None,
        "max_margin_minus_noise_of_a_primary_set_difference": float(worst.max())
        if primary_set.any()
        else None,
        "choice_score_noise": {
            "max": float(noise.max()) if noise.size else 0.0,
            "p99_9": float(np.quantile(noise, 0.999)) if noise.size else 0.0,
            "median": float(np.median(noise)) if noise.size else 0.0,
        },
        "reference_set_margin": {
            "median": float(np.median(set_margin)) if positions else None,
            "p0_1": float(np.quantile(set_margin, 0.001)) if positions else None,
        },
        # How often a decision is as close as the noise can reach: the expected rate of honest differences.
        "share_of_decisions_within_max_noise": float(
            (set_margin <= (noise.max() if noise.size else 0)).mean()
        )
        if positions
        else 0.0,
    }
