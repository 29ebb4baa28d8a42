"""The controls of the sense-pair effect, a named set: each says what Δκ is left once a confound is removed.

Every control is a least-squares coefficient β_same in float64, per MoE layer l, over the valid pairs p:

    κ_p,l = β0 + β_same,l · same_p + Σ_f Σ_{v ≠ ref_f} γ_f,v,l · [f_p = v] + Σ_j β_j,l · x_j,p + ε

with categorical factors f (one dummy per non-empty level except the most frequent, so no column is empty)
and linear terms x_j. Columns that are linear combinations of the others are dropped (they do not change the
fit); a design in which `same` itself is a combination of the covariates is refused (β_same has no
meaning there). CIs: one cluster bootstrap over lemmas for all controls, resampling the per-lemma normal
equations X'X and X'κ (float64); a replicate in which a level is absent solves with that column removed.

    context_words    factors: stratum of the context-word Jaccard (each value when ≤ 10, else deciles, then
                     + linear J)
    token_identity   factor: the cell of four indicators (same target token-id sequence, same target
                     surface form, same left neighbour token, same right neighbour token)
    null_model       Δκ(model) − Δκ(null) (a regression on `same` alone is the difference of means), on the
                     pairs both routed; null = a random-init twin (for a random-init model: its twin of
                     another seed, where this control must come out near 0)
    all              context_words + token_identity at once, and over the null model when there is one
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atlas_build.metrics.identity import TargetIdentity
from atlas_build.metrics.senses import BootstrapOptions, SenseCorpus, interval
from atlas_build.metrics.stats import ClusterIndex, cluster_bootstrap

# Up to this many distinct Jaccard values, each value is its own stratum; beyond, decile bins.
MAX_EXACT_STRATA = 10
CONTROL_NAMES = ("context_words", "token_identity", "null_model", "all")


class DesignError(ValueError):
    """The same-sense indicator is a linear combination of the control's covariates."""


def jaccard_strata(jaccard: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stratum code per pair: each distinct J when there are few, else decile bins (then J is also a term)."""
    values, inverse = np.unique(jaccard, return_inverse=True)
    if len(values) <= MAX_EXACT_STRATA:
        return inverse.reshape(-1), False
    edges = np.unique(np.quantile(jaccard, np.linspace(0, 1, 11)[1:-1]))
    return np.searchsorted(edges, jaccard, side="right"), True


@dataclass
class Covariates:
    """What a control adjusts for, on the pairs of its regression."""

    factors: list[np.ndarray] = field(default_factory=list)  # [P] integer codes each
    linear: list[np.ndarray] = field(default_factory=list)  # [P] float each


def _rank(gram: np.ndarray) -> int:
    if not len(gram):
        return 0
    scale = np.sqrt(np.clip(np.diagonal(gram), 1e-300, None))
    return int(np.linalg.matrix_rank(gram / np.outer(scale, scale), tol=1e-9))


def design_matrix(same: np.ndarray, covariates: Covariates) -> np.ndarray:
    """`[P, d]` float64 design: intercept, `same`, linear terms, then factor dummies; full column rank.

    Raises:
        DesignError: `same` is constant or is determined by the covariates.
    """
    columns = [np.ones(len(same)), same.astype(np.float64)]
    columns += [np.asarray(x, dtype=np.float64) for x in covariates.linear]
    for codes in covariates.factors:
        levels, counts = np.unique(codes, return_counts=True)
        reference = levels[np.argmax(counts)]
        columns += [(codes == v).astype(np.float64) for v in levels if v != reference]
    x = np.column_stack(columns)
    gram = x.T @ x
    if _rank(gram[:2, :2]) < 2:
        raise DesignError("every pair is same-sense or every pair is different-sense")
    others = [0, *range(2, x.shape[1])]
    if _rank(gram[np.ix_(others, others)]) == _rank(gram):
        raise DesignError("the same-sense indicator is a linear combination of the control's strata")
    keep = [0, 1]
    for j in range(2, x.shape[1]):  # drop columns in the span of the kept ones: the fit is unchanged
        trial = [*keep, j]
        if _rank(gram[np.ix_(trial, trial)]) == len(trial):
            keep = trial
    return x[:, keep]


def solve_normal_equations(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """β `[..., d, L]` from X'X `[..., d, d]` and X'y `[..., d, L]` (float64).

    A column that is empty in a bootstrap replicate (an absent level: zero row and column of X'X) gets
    β = 0, which is its least-squares solution with that column removed; any other singular replicate is
    solved by the pseudo-inverse.
    """
    gram = np.array(gram, dtype=np.float64)
    empty = np.diagonal(gram, axis1=-2, axis2=-1) == 0
    if empty.any():
        d = gram.shape[-1]
        eye = np.broadcast_to(np.eye(d, dtype=bool), gram.shape)
        gram[eye & empty[..., None, :]] = 1.0
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(gram) @ rhs


@dataclass
class Regression:
    """One model's regression of κ on a design, over the valid pairs `rows` of the corpus."""

    rows: np.ndarray  # [P'] pair indices
    x: np.ndarray  # [P', d]
    y: np.ndarray  # [P', L]


@dataclass
class ControlSpec:
    name: str
    method: str
    regressions: list[Regression]  # one (the model) or two (model, null): then β(model) − β(null)
    extra: dict = field(default_factory=dict)

    @property
    def per_layer(self) -> bool:
        return len(self.regressions) == 1 or self.regressions[0].y.shape[1] == self.regressions[1].y.shape[1]


def _normal_equation_sums(reg: Regression, index: ClusterIndex, cluster: np.ndarray) -> np.ndarray:
    """Per-cluster X'X `[C, d²]` and X'y `[C, d·L]`, summed row block by row block (no `[P, d²]` buffer)."""
    sub = ClusterIndex(cluster[reg.rows], index.n_clusters)
    x, y = sub.sort(reg.x), sub.sort(reg.y)
    d = x.shape[1]
    xtx = np.hstack([sub.sums(x[:, i : i + 1] * x, presorted=True) for i in range(d)])
    xty = np.hstack([sub.sums(x[:, i : i + 1] * y, presorted=True) for i in range(d)])
    return np.hstack([xtx, xty])


def run_controls(
    specs: list[ControlSpec], corpus: SenseCorpus, options: BootstrapOptions, seed_offset: int = 2
) -> dict[str, dict]:
    """Estimate every control and its 95% CI from one cluster bootstrap over lemmas (shared resamples)."""
    index = ClusterIndex(corpus.pair_group, corpus.n_groups)
    blocks, layout = [], []
    for spec in specs:
        for reg in spec.regressions:
            d, n_layers = reg.x.shape[1], reg.y.shape[1]
            blocks.append(_normal_equation_sums(reg, index, corpus.pair_group))
            layout.append((d, n_layers))
    if not blocks:
        return {}
    sums = np.hstack(blocks)
    present = np.bincount(corpus.pair_group, minlength=corpus.n_groups) > 0
    sums = sums[present]

    def betas(t, at, d, n_layers):
        gram = t[..., at : at + d * d].reshape(*t.shape[:-1], d, d)
        rhs = t[..., at + d * d : at + d * d + d * n_layers].reshape(*t.shape[:-1], d, n_layers)
        return solve_normal_equations(gram, rhs)[..., 1, :], at + d * d + d * n_layers

    def estimator(t):
        out, at, k = [], 0, 0
        for spec in specs:
            got = []
            for _ in spec.regressions:
                beta, at = betas(t, at, *layout[k])
                got.append(beta)
                k += 1
            if len(got) == 1:
                out += [got[0], got[0].mean(axis=-1, keepdims=True)]
            else:
                mean = got[0].mean(axis=-1, keepdims=True) - got[1].mean(axis=-1, keepdims=True)
                out += ([got[0] - got[1]] if spec.per_layer else []) + [mean]
        return np.concatenate(out, axis=-1)

    est, low, high = cluster_bootstrap(
        sums,
        estimator,
        n_resamples=options.n_resamples,
        confidence=options.confidence,
        seed=options.seed + seed_offset,
    )
    results, at = {}, 0
    for spec in specs:
        n_layers = spec.regressions[0].y.shape[1]
        delta = None
        if spec.per_layer:
            delta = interval(est[at : at + n_layers], low[at : at + n_layers], high[at : at + n_layers])
            at += n_layers
        mean = interval(float(est[at]), float(low[at]), float(high[at]))
        at += 1
        results[spec.name] = {
            "method": spec.method,
            "delta": delta,
            "layer_mean": {"delta": mean},
            "n_pairs": int(len(spec.regressions[0].rows)),
            "n_columns": [int(r.x.shape[1]) for r in spec.regressions],
            **spec.extra,
        }
    return results


@dataclass
class NullModel:
    """The null model's κ on the same pairs and its own token identity (its tokenizer may differ)."""

    slug: str
    kappa: np.ndarray  # [P, L_null]
    identity: TargetIdentity | None


def pair_controls(
    kappa: np.ndarray,
    corpus: SenseCorpus,
    identity: TargetIdentity | None,
    options: BootstrapOptions,
    null: NullModel | None = None,
) -> dict[str, dict]:
    """Every applicable control (`CONTROL_NAMES`) of the sense-pair Δκ, as `{name: result}`.

    A result is `{"method", "delta": interval[L] | None, "layer_mean": {"delta": interval}, "n_pairs",
    "n_columns", ...}`, or `{"method", "delta": None, "layer_mean": None, "error": str}` when its design is
    refused. `null_model` is absent without a null model; `token_identity` without routing rows.
    """
    valid = np.flatnonzero(np.isfinite(kappa).all(axis=1))
    strata, linear = jaccard_strata(corpus.jaccard[valid])
    jaccard_method = "context-Jaccard strata" + (
        " (deciles) + linear Jaccard" if linear else " (each distinct value)"
    )

    def covariates(rows, strata_rows, words: bool, ident: TargetIdentity | None) -> Covariates:
        cov = Covariates()
        if words:
            cov.factors.append(strata_rows)
            if linear:
                cov.linear.append(corpus.jaccard[rows])
        if ident is not None:
            cov.factors.append(ident.pair_cells(corpus.pair_a[rows], corpus.pair_b[rows]))
        return cov

    specs, errors = [], {}

    def add(name, method, parts, extra=None):
        try:
            regs = [
                Regression(rows, design_matrix(corpus.pair_same[rows], cov), k[rows])
                for rows, cov, k in parts
            ]
        except DesignError as error:
            errors[name] = {"method": method, "delta": None, "layer_mean": None, "error": str(error)}
            return
        specs.append(ControlSpec(name, method, regs, extra or {}))

    add(
        "context_words",
        f"least squares of kappa on same_sense + {jaccard_method}",
        [(valid, covariates(valid, strata, True, None), kappa)],
        {"n_strata": int(strata.max()) + 1 if len(strata) else 0},
    )
    if identity is not None:
        add(
            "token_identity",
            "least squares of kappa on same_sense + one stratum per cell of (same target token-id sequence, "
            "same target surface form, same left neighbour token, same right neighbour token)",
            [(valid, covariates(valid, None, False, identity), kappa)],
        )
    both = valid
    if null is not None:
        both = np.flatnonzero(np.isfinite(kappa).all(axis=1) & np.isfinite(null.kappa).all(axis=1))
        add(
            "null_model",
            f"Δκ(model) − Δκ({null.slug}) on the pairs both routed (joint cluster bootstrap)",
            [(both, Covariates(), kappa), (both, Covariates(), null.kappa)],
            {"null_model": null.slug},
        )
    strata_both = jaccard_strata(corpus.jaccard[both])[0] if null is not None else strata
    parts = [(both, covariates(both, strata_both, True, identity), kappa)]
    method = f"least squares of kappa on same_sense + {jaccard_method} + token-identity cells"
    if null is not None:
        parts.append((both, covariates(both, strata_both, True, null.identity), null.kappa))
        method += f", minus the same coefficient for {null.slug}"
    add("all", method, parts, {"null_model": null.slug} if null is not None else {})
    results = run_controls(specs, corpus, options)
    results.update(errors)
    return {name: results[name] for name in CONTROL_NAMES if name in results}
