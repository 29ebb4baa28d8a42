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
    position         factor: the unordered pair of the two targets' position buckets (the token_index of
                     the first target token: each of 0..7, then half-octaves [8, 12), [12, 16), [16, 24), ...)
    neighbours       factor: the cell of (same left neighbour token id, same right neighbour token id), the
                     two neighbours together (the token co-occurrence around the target)
    null_model       Δκ(model) − Δκ(null) (a regression on `same` alone is the difference of means), on the
                     pairs both routed; null = a random-init twin (for a random-init model: its twin of
                     another seed, where this control must come out near 0)
    all              context_words + token_identity + position + neighbours at once, and over the null model
                     when there is one

The factor controls read the targets' token identity (`FACTOR_CONTROLS`, one row each: a name, its method
text and its strata per pair); a new one is a row there, and `all` includes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from atlas_build.metrics.estimators.identity import TargetIdentity
from atlas_build.metrics.estimators.senses import BootstrapOptions, SenseCorpus, interval
from atlas_build.metrics.estimators.stats import ClusterIndex, cluster_bootstrap

# Up to this many distinct Jaccard values, each value is its own stratum; beyond, decile bins.
MAX_EXACT_STRATA = 10
# Position buckets: each position below this is its own bucket, then half-octaves.
EXACT_POSITIONS = 8


def position_buckets(position: np.ndarray) -> np.ndarray:
    """Bucket of each token position: p itself below `EXACT_POSITIONS`, then half-octaves [8, 12), [12, 16),
    [16, 24), ...; −1 for an unknown position."""
    p = np.asarray(position, dtype=np.int64)
    octave = np.floor(np.log2(np.maximum(p, 1))).astype(np.int64)
    half = (p >= 3 * (1 << octave) // 2).astype(np.int64)  # the upper half of the octave
    base = int(np.log2(EXACT_POSITIONS))
    bucket = np.where(p < EXACT_POSITIONS, p, EXACT_POSITIONS + 2 * (octave - base) + half)
    return np.where(p < 0, -1, bucket)


def position_pair_strata(identity: TargetIdentity, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """`[P]` the unordered pair (lower bucket, higher bucket) of the two targets' position buckets."""
    a, b = position_buckets(identity.position[ia]), position_buckets(identity.position[ib])
    lo, hi = np.minimum(a, b) + 1, np.maximum(a, b) + 1
    return lo * (int(hi.max(initial=0)) + 1) + hi


@dataclass(frozen=True)
class FactorControl:
    """A control whose covariate is one categorical factor of the pair, from the targets' token identity."""

    name: str
    method: str  # the `method` text of its result
    strata: Callable[[TargetIdentity, np.ndarray, np.ndarray], np.ndarray]  # (identity, ia, ib) -> [P] codes
    needs: str | None = None  # a TargetIdentity field it reads that may be absent (then not applicable)

    def applies(self, identity: TargetIdentity | None) -> bool:
        return identity is not None and (self.needs is None or getattr(identity, self.needs) is not None)


FACTOR_CONTROLS: list[FactorControl] = [
    FactorControl(
        "token_identity",
        "least squares of kappa on same_sense + one stratum per cell of (same target token-id sequence, same "
        "target surface form, same left neighbour token, same right neighbour token)",
        lambda identity, ia, ib: identity.pair_cells(ia, ib),
    ),
    FactorControl(
        "position",
        "least squares of kappa on same_sense + one stratum per unordered pair of the targets' position "
        f"buckets (token_index of the first target token: 0..{EXACT_POSITIONS - 1} each, then half-octaves)",
        position_pair_strata,
        needs="position",
    ),
    FactorControl(
        "neighbours",
        "least squares of kappa on same_sense + one stratum per cell of (same left neighbour token id, same "
        "right neighbour token id), both neighbours together",
        lambda identity, ia, ib: identity.neighbour_cells(ia, ib),
    ),
]
CONTROL_NAMES = ("context_words", *(c.name for c in FACTOR_CONTROLS), "null_model", "all")


class DesignError(ValueError):
    """The same-sense indicator is a linear combination of the control's covariates."""


def jaccard_strata(jaccard: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stratum code per pair: each distinct J when there are few, else decile bins (then J is also a term)."""
    values, inverse = np.unique(jaccard, return_inverse=True)
    if len(values) <= MAX_EXACT_STRATA:
        return inverse.reshape(-1), False
    edges = np.unique(np.quantile(jaccard, np.linspace(0, 1, 11)[1:-1]))
    return np.searchsorted(edges, jaccard, side="right"), True


def _rank(gram: np.ndarray) -> int:
    if not len(gram):
        return 0
    scale = np.sqrt(np.clip(np.diagonal(gram), 1e-300, None))
    return int(np.linalg.matrix_rank(gram / np.outer(scale, scale), tol=1e-9))


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


def select_columns(gram: np.ndarray, columns: list[int]) -> list[int]:
    """The columns of `columns` (intercept and `same` first) that keep a full-rank design, by the total X'X.

    Raises:
        DesignError: `same` is constant or is a linear combination of the other columns.
    """
    if _rank(gram[np.ix_(columns[:2], columns[:2])]) < 2:
        raise DesignError("every pair is same-sense or every pair is different-sense")
    others = [columns[0], *columns[2:]]
    if _rank(gram[np.ix_(others, others)]) == _rank(gram[np.ix_(columns, columns)]):
        raise DesignError("the same-sense indicator is a linear combination of the control's strata")
    keep = list(columns[:2])
    for j in columns[2:]:  # drop columns in the span of the kept ones: the fit is unchanged
        trial = [*keep, j]
        if _rank(gram[np.ix_(trial, trial)]) == len(trial):
            keep = trial
    return keep


@dataclass
class Block:
    """The union design of several controls on one set of pairs: dense columns (intercept, same, linear
    terms), then one dummy per non-reference level of each factor; per-cluster X'X and X'κ of every model.

    Controls are column subsets of it, so one bootstrap of its normal equations serves them all.
    """

    rows: np.ndarray  # [P'] pair indices
    dense: np.ndarray  # [P', q]
    factors: list[np.ndarray]  # [P'] level code per factor, -1 at the reference level
    sizes: list[int]  # levels (dummies) per factor
    ys: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> κ [P', L]

    @classmethod
    def of(cls, rows: np.ndarray, same: np.ndarray, linear: list[np.ndarray], factors: list[np.ndarray]):
        dense = np.column_stack([np.ones(len(rows)), same.astype(np.float64), *linear])
        codes, sizes = [], []
        for f in factors:
            levels, inverse, counts = np.unique(f, return_inverse=True, return_counts=True)
            reference = int(np.argmax(counts))
            inverse = inverse.reshape(-1)
            codes.append(np.where(inverse == reference, -1, inverse - (inverse > reference)))
            sizes.append(len(levels) - 1)
        return cls(rows, dense, codes, sizes)

    @property
    def width(self) -> int:
        return self.dense.shape[1] + sum(self.sizes)

    def offsets(self) -> list[int]:
        return list(np.cumsum([self.dense.shape[1], *self.sizes])[:-1])

    def columns(self, linear: bool, factors: list[int]) -> list[int]:
        """Intercept, same, (the linear terms), then the dummies of `factors`."""
        cols = [0, 1] + (list(range(2, self.dense.shape[1])) if linear else [])
        offsets = self.offsets()
        for f in factors:
            cols += list(range(offsets[f], offsets[f] + self.sizes[f]))
        return cols

    def total_gram(self, n_pairs: int) -> np.ndarray:
        """X'X `[d, d]` over all the block's pairs (for the rank checks)."""
        return self.normal_equations(np.zeros(n_pairs, dtype=np.int64), 1, with_rhs=False)[0][0]

    def normal_equations(
        self, cluster: np.ndarray, n_clusters: int, with_rhs: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per-cluster X'X `[C, d, d]` and X'κ `[C, d, L]` per model, from sums over (cluster, level)
        groups: a dummy column is never multiplied out row by row."""
        cluster = cluster[self.rows]
        q, d = self.dense.shape[1], self.width
        gram = np.zeros((n_clusters, d, d))
        ys = self.ys if with_rhs else {}
        rhs = {name: np.zeros((n_clusters, d, y.shape[1])) for name, y in ys.items()}
        index = ClusterIndex(cluster, n_clusters)
        dense = index.sort(self.dense)
        for i in range(q):
            gram[:, i, :q] = index.sums(dense[:, i : i + 1] * dense, presorted=True)
            for name, y in ys.items():
                rhs[name][:, i] = index.sums(dense[:, i : i + 1] * index.sort(y), presorted=True)
        offsets = self.offsets()
        for f, (codes, m, at) in enumerate(zip(self.factors, self.sizes, offsets, strict=True)):
            sel = codes >= 0
            key = cluster[sel] * m + codes[sel]
            count = np.bincount(key, minlength=n_clusters * m).reshape(n_clusters, m)
            gram[:, np.arange(at, at + m), np.arange(at, at + m)] = count
            for i in range(q):
                block = np.bincount(key, weights=self.dense[sel, i], minlength=n_clusters * m)
                gram[:, i, at : at + m] = gram[:, at : at + m, i] = block.reshape(n_clusters, m)
            if len(key):
                order = np.argsort(key, kind="stable")
                ks = key[order]
                starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
                groups = ks[starts]
                for name, y in ys.items():
                    rhs[name][groups // m, at + groups % m] = np.add.reduceat(y[sel][order], starts, axis=0)
            for g in range(f + 1, len(self.factors)):
                other, mg, ag = self.factors[g], self.sizes[g], offsets[g]
                both = sel & (other >= 0)
                key2 = (cluster[both] * m + codes[both]) * mg + other[both]
                cross = np.bincount(key2, minlength=n_clusters * m * mg).reshape(n_clusters, m, mg)
                gram[:, at : at + m, ag : ag + mg] = cross
                gram[:, ag : ag + mg, at : at + m] = cross.transpose(0, 2, 1)
        return gram, rhs


@dataclass
class ControlSpec:
    """One control: per model, (block, model name, columns); two models: β(first) − β(second)."""

    name: str
    method: str
    parts: list[tuple[int, str, list[int]]]
    extra: dict = field(default_factory=dict)


def run_controls(
    blocks: list[Block], specs: list[ControlSpec], corpus: SenseCorpus, options: BootstrapOptions, seed: int
) -> dict[str, dict]:
    """Estimate every control and its CI from one cluster bootstrap over lemmas (shared resamples) of the
    blocks' per-cluster normal equations (X'X stored as its upper triangle)."""
    present = np.bincount(corpus.pair_group, minlength=corpus.n_groups) > 0
    columns, layout = [], []
    for block in blocks:
        gram, rhs = block.normal_equations(corpus.pair_group, corpus.n_groups)
        d = block.width
        upper = np.triu_indices(d)
        packed = np.zeros((d, d), dtype=np.int64)
        packed[upper] = np.arange(len(upper[0]))
        packed = np.maximum(packed, packed.T)  # (i, j) -> position of (min, max) in the triangle
        at = sum(c.shape[1] for c in columns)
        columns.append(gram[:, upper[0], upper[1]][present])
        entry = {"gram": (at, len(upper[0]), packed, d), "rhs": {}}
        at += len(upper[0])
        for name, r in rhs.items():
            columns.append(r.reshape(len(r), -1)[present])
            entry["rhs"][name] = (at, r.shape[2])
            at += r.shape[1] * r.shape[2]
        layout.append(entry)
    sums = np.hstack(columns)

    def beta(t, block: int, name: str, cols: list[int]):
        at, size, packed, d = layout[block]["gram"]
        gram = t[..., at : at + size][..., packed[np.ix_(cols, cols)]]
        r_at, n_layers = layout[block]["rhs"][name]
        rhs = t[..., r_at : r_at + d * n_layers].reshape(*t.shape[:-1], d, n_layers)[..., cols, :]
        return solve_normal_equations(gram, rhs)[..., 1, :]

    def estimator(t):
        out = []
        for spec in specs:
            got = [beta(t, *part) for part in spec.parts]
            if len(got) == 1:
                out += [got[0], got[0].mean(axis=-1, keepdims=True)]
            else:
                mean = got[0].mean(axis=-1, keepdims=True) - got[1].mean(axis=-1, keepdims=True)
                out += ([got[0] - got[1]] if got[0].shape[-1] == got[1].shape[-1] else []) + [mean]
        return np.concatenate(out, axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=seed
    )
    results, at = {}, 0
    for spec in specs:
        n_layers = [layout[b]["rhs"][name][1] for b, name, _ in spec.parts]
        delta = None
        if len(set(n_layers)) == 1:
            sl = slice(at, at + n_layers[0])
            delta = interval(est[sl], low[sl], high[sl])
            at += n_layers[0]
        mean = interval(float(est[at]), float(low[at]), float(high[at]))
        at += 1
        results[spec.name] = {
            "method": spec.method,
            "delta": delta,
            "layer_mean": {"delta": mean},
            "n_pairs": int(len(blocks[spec.parts[0][0]].rows)),
            "n_columns": [len(cols) for _, _, cols in spec.parts],
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
    refused. `null_model` is absent without a null model; the `FACTOR_CONTROLS` (token_identity, position,
    neighbours) without routing rows.
    """
    valid = np.flatnonzero(np.isfinite(kappa).all(axis=1))
    both = valid
    if null is not None:
        both = np.flatnonzero(np.isfinite(kappa).all(axis=1) & np.isfinite(null.kappa).all(axis=1))
    blocks: list[Block] = []
    keys: dict[tuple, int] = {}
    linear_terms = {}

    def factor_controls(ident: TargetIdentity | None) -> list[FactorControl]:
        return [c for c in FACTOR_CONTROLS if c.applies(ident)]

    def block_of(rows: np.ndarray, ident: TargetIdentity | None) -> int:
        """The block of these pairs with this token identity (shared when rows and cells coincide): factor
        0 the Jaccard strata, then one factor per applicable `FACTOR_CONTROLS` row, in order."""
        strata, linear = jaccard_strata(corpus.jaccard[rows])
        factors = [strata]
        for control in factor_controls(ident):
            factors.append(control.strata(ident, corpus.pair_a[rows], corpus.pair_b[rows]))
        key = (rows.tobytes(), *(f.tobytes() for f in factors))
        if key not in keys:
            lin = [corpus.jaccard[rows]] if linear else []
            keys[key] = len(blocks)
            blocks.append(Block.of(rows, corpus.pair_same[rows], lin, factors))
            linear_terms[keys[key]] = linear
        return keys[key]

    def y_of(block: int, name: str, values: np.ndarray) -> str:
        blocks[block].ys.setdefault(name, values[blocks[block].rows])
        return name

    main = block_of(valid, identity)
    y_of(main, "model", kappa)
    linear = linear_terms[main]
    jaccard_method = "context-Jaccard strata" + (
        " (deciles) + linear Jaccard" if linear else " (each distinct value)"
    )
    requests = [
        (
            "context_words",
            f"least squares of kappa on same_sense + {jaccard_method}",
            [(main, "model", True, [0])],
            {"n_strata": blocks[main].sizes[0] + 1},
        )
    ]
    controls = factor_controls(identity)
    for f, control in enumerate(controls, start=1):
        requests.append((control.name, control.method, [(main, "model", False, [f])], {}))
    all_factors = list(range(1 + len(controls)))
    method = f"least squares of kappa on same_sense + {jaccard_method}" + "".join(
        f" + {c.name} strata" for c in controls
    )
    if null is None:
        requests.append(("all", method, [(main, "model", True, all_factors)], {}))
    else:
        model_block = block_of(both, identity)
        null_block = block_of(both, null.identity)
        y_of(model_block, "model", kappa)
        y_of(null_block, "null", null.kappa)
        requests.append(
            (
                "null_model",
                f"Δκ(model) − Δκ({null.slug}) on the pairs both routed (joint cluster bootstrap)",
                [(model_block, "model", False, []), (null_block, "null", False, [])],
                {"null_model": null.slug},
            )
        )
        null_factors = list(range(1 + len(factor_controls(null.identity))))
        requests.append(
            (
                "all",
                method + f", minus the same coefficient for {null.slug}",
                [(model_block, "model", True, all_factors), (null_block, "null", True, null_factors)],
                {"null_model": null.slug},
            )
        )

    totals = {}
    specs, errors = [], {}
    for name, method_text, parts, extra in requests:
        try:
            resolved = []
            for b, y_name, lin, factors in parts:
                if b not in totals:
                    totals[b] = blocks[b].total_gram(len(corpus.pair_group))
                cols = blocks[b].columns(lin and linear_terms[b], factors)
                resolved.append((b, y_name, select_columns(totals[b], cols)))
        except DesignError as error:
            errors[name] = {"method": method_text, "delta": None, "layer_mean": None, "error": str(error)}
            continue
        specs.append(ControlSpec(name, method_text, resolved, extra))
    results = run_controls(blocks, specs, corpus, options, options.seed + 2) if specs else {}
    results.update(errors)
    return {name: results[name] for name in CONTROL_NAMES if name in results}
