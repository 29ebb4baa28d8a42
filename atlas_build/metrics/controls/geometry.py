"""`controls.hidden_state`: the sense-pair effect net of what the router saw (atlases with `--router-inputs`).

The objection: two tokens may share experts only because their hidden states are alike (arXiv 2604.09780
argues that hidden-state similarity is necessary and sufficient for similar expert usage). If so, the same-
vs-different-sense Δκ is geometry, not sense. The control asks what Δκ is left once the two targets'
router-input similarity at the same layer is accounted for, flexibly:

    κ_p,l = β0 + β_same,l · same_p + Σ_b γ_b,l · [c_p,l ∈ bin b] + δ_l · c_p,l + ε

with c_p,l the cosine similarity of the two target tokens' stored router inputs at layer l (JL projections
keep inner products, so cosines, within the recorded bound), bins the deciles of c_·,l (a step function plus
a slope: any monotone or non-monotone dependence on similarity is absorbed up to bin resolution). One fit
per stored layer (the covariate differs between layers); CIs from the same cluster bootstrap over lemmas as
the other controls (`regression.Block` normal equations, `stats.cluster_bootstrap`), with the raw Δκ at the
same layers and the share of it that geometry explains, 1 − Δκ(hidden_state) / Δκ(raw) on the layer mean,
in the same replicates. `all` (without a null model) gains the same terms: context-word strata + token
identity + router-input similarity, at the stored layers.

A target of several sub-tokens is represented as `options.target` picks its routing (first, last, or the
mean vector of all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.schema import ROUTER_INPUTS_COLUMN
from atlas_build.metrics.controls.regression import (
    Block,
    DesignError,
    jaccard_strata,
    select_columns,
    solve_normal_equations,
)
from atlas_build.metrics.estimators.identity import TargetIdentity
from atlas_build.metrics.estimators.senses import BootstrapOptions, SenseCorpus, interval
from atlas_build.metrics.estimators.stats import cluster_bootstrap

N_BINS = 10
NAME = "hidden_state"
METHOD = (
    "least squares of kappa on same_sense + decile bins of the targets' router-input cosine similarity at the "
    "layer + linear cosine, one fit per stored layer"
)


@dataclass
class PairGeometry:
    """Router-input cosine similarity of every sense pair's two targets at the stored layers."""

    layers: list[int]  # decoder layers (models.router_input_layers)
    columns: list[int]  # their positions in moe_layers (κ's columns)
    cosine: np.ndarray  # [P, n] float64; NaN where a target has no vector


def target_vectors(
    table: pa.Table, example_ids: pa.Array | pa.ChunkedArray, corpus: str, mode: str
) -> np.ndarray:
    """Float64 `[E, n, D]` router input of each example's target (`mode` first / last / all = mean); NaN rows
    for examples without target tokens. `table`: routing rows with source_id, corpus, token_index, is_target,
    router_inputs."""
    from atlas_build.atlas.routing import routing_array

    mask = pc.and_(table.column("is_target"), pc.equal(table.column("corpus"), corpus))
    rows = table.filter(mask)
    if isinstance(example_ids, pa.ChunkedArray):
        example_ids = example_ids.combine_chunks()
    column = rows.column(ROUTER_INPUTS_COLUMN)
    n, dim = column.type.list_size, column.type.value_type.list_size
    out = np.full((len(example_ids), n, dim), np.nan)
    if rows.num_rows == 0:
        return out
    position = pc.fill_null(pc.index_in(rows.column("source_id"), value_set=example_ids), -1).to_numpy()
    keep = np.flatnonzero(position >= 0)
    token = rows.column("token_index").to_numpy()[keep]
    order = keep[np.lexsort((token, position[keep]))]
    values = routing_array(column).astype(np.float64)[order]
    pos = position[order]
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    ends = np.r_[starts[1:], len(pos)]
    if mode == "first":
        out[pos[starts]] = values[starts]
    elif mode == "last":
        out[pos[starts]] = values[ends - 1]
    else:
        out[pos[starts]] = np.add.reduceat(values, starts, axis=0) / (ends - starts)[:, None, None]
    return out


def pair_geometry(
    vectors: np.ndarray, corpus: SenseCorpus, layers: list[int], moe_layers: list[int]
) -> PairGeometry:
    """Cosine `[P, n]` of each pair's target vectors (`vectors` from `target_vectors`)."""
    a, b = vectors[corpus.pair_a], vectors[corpus.pair_b]
    norms = np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (a * b).sum(axis=2) / norms, np.nan)
    return PairGeometry(list(layers), [list(moe_layers).index(layer) for layer in layers], cosine)


def cosine_bins(cosine: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Decile bin code of each cosine (fewer bins where quantiles coincide)."""
    edges = np.unique(np.quantile(cosine, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, cosine, side="right")


def hidden_state_control(
    kappa: np.ndarray,
    corpus: SenseCorpus,
    geometry: PairGeometry,
    options: BootstrapOptions,
    identity: TargetIdentity | None = None,
) -> tuple[dict, dict | None]:
    """The `hidden_state` control and the geometry-inclusive `all` at the stored layers.

    Returns `(hidden_state, all_with_geometry)`; each `{"method", "delta", "layer_mean": {"delta"}, ...}`.
    `hidden_state` also holds `raw` (Δκ at the stored layers, the same pairs, same replicates) and
    `explained` (1 − layer-mean Δκ(hidden_state) / layer-mean Δκ(raw)). A refused design gives
    `{"method", "delta": None, "layer_mean": None, "error"}` and no `all`.
    """
    n_moe = kappa.shape[1]
    finite = np.isfinite(kappa).all(axis=1) & np.isfinite(geometry.cosine).all(axis=1)
    rows = np.flatnonzero(finite)
    designs: list[tuple[str, int, Block, list[int]]] = []
    try:
        if len(rows) < 2 * N_BINS:
            raise DesignError(f"only {len(rows)} pairs have router inputs for both targets")
        strata, jaccard_linear = jaccard_strata(corpus.jaccard[rows])
        for j, column in enumerate(geometry.columns):
            cos = geometry.cosine[rows, j]
            factors = [cosine_bins(cos), strata]
            if identity is not None:
                factors.append(identity.pair_cells(corpus.pair_a[rows], corpus.pair_b[rows]))
            linear = [cos] + ([corpus.jaccard[rows]] if jaccard_linear else [])
            block = Block.of(rows, corpus.pair_same[rows], linear, factors)
            block.ys["k"] = kappa[rows, column : column + 1]
            gram = block.total_gram(len(corpus.pair_group))
            geo_cols = select_columns(gram, [0, 1, 2, *block.columns(False, [0])[2:]])
            all_cols = select_columns(gram, block.columns(True, list(range(len(factors)))))
            designs += [("raw", j, block, [0, 1]), ("geo", j, block, geo_cols), ("all", j, block, all_cols)]
    except DesignError as error:
        return {"method": METHOD, "delta": None, "layer_mean": None, "error": str(error)}, None

    present = np.bincount(corpus.pair_group, minlength=corpus.n_groups) > 0
    parts, at = [], 0
    blocks_done: dict[int, tuple] = {}
    for _, _, block, _ in designs:
        if id(block) in blocks_done:
            continue
        gram, rhs = block.normal_equations(corpus.pair_group, corpus.n_groups)
        d = block.width
        parts += [gram.reshape(len(gram), -1)[present], rhs["k"].reshape(len(gram), -1)[present]]
        blocks_done[id(block)] = (at, d)
        at += d * d + d
    sums = np.hstack(parts)
    n = len(geometry.columns)

    def estimator(t):
        beta = {}
        for kind, j, block, cols in designs:
            start, d = blocks_done[id(block)]
            gram = t[..., start : start + d * d].reshape(*t.shape[:-1], d, d)[..., cols, :][..., :, cols]
            rhs = t[..., start + d * d : start + d * d + d][..., cols]
            beta[kind, j] = solve_normal_equations(gram, rhs[..., None])[..., 1, 0]
        out = []
        for kind in ("geo", "raw", "all"):
            layer = np.stack([beta[kind, j] for j in range(n)], axis=-1)
            out += [layer, layer.mean(axis=-1, keepdims=True)]
        with np.errstate(divide="ignore", invalid="ignore"):
            explained = 1.0 - out[1] / out[3]
        return np.concatenate([*out, explained], axis=-1)

    est, low, high = cluster_bootstrap(
        sums, estimator, n_resamples=options.n_resamples, confidence=options.confidence, seed=options.seed + 7
    )

    def block_of(index: int) -> tuple[dict, dict]:
        sl = slice(index * (n + 1), index * (n + 1) + n)
        mean = index * (n + 1) + n
        return (
            interval(est[sl].tolist(), low[sl].tolist(), high[sl].tolist()),
            {"delta": interval(float(est[mean]), float(low[mean]), float(high[mean]))},
        )

    def full_layers(per_stored: dict) -> dict | None:
        """`delta` per MoE layer only when every MoE layer is stored (else the verdict uses the layer mean)."""
        return per_stored if n == n_moe else None

    geo, geo_mean = block_of(0)
    raw, raw_mean = block_of(1)
    combined, combined_mean = block_of(2)
    e = 3 * (n + 1)
    common = {"n_pairs": int(len(rows)), "layers": geometry.layers}
    hidden = {
        "method": METHOD,
        "delta": full_layers(geo),
        "delta_at_layers": geo,
        "layer_mean": geo_mean,
        "raw": {"delta_at_layers": raw, "layer_mean": raw_mean},
        "explained": interval(float(est[e]), float(low[e]), float(high[e])),
        "n_bins": N_BINS,
        **common,
    }
    combined_method = (
        "least squares of kappa on same_sense + context-Jaccard strata"
        + (" + token-identity cells" if identity is not None else "")
        + " + router-input cosine bins and slope, one fit per stored layer"
    )
    all_result = {
        "method": combined_method,
        "delta": full_layers(combined),
        "delta_at_layers": combined,
        "layer_mean": combined_mean,
        **common,
    }
    return hidden, all_result


def router_geometry(
    src, row: dict, corpus: SenseCorpus, target: str, sense_layers: list[int] | None = None
) -> PairGeometry | None:
    """The sense pairs' router-input geometry of one model of an atlas source (None without router inputs).

    `sense_layers`: the decoder layers the sense metrics keep (hash-routed layers left out); the geometry's
    columns then index into them, and stored layers outside them are dropped.
    """
    from atlas_build.atlas.schema import ROUTING_PREFIX, SENSES

    if not row.get("router_input_layers"):
        return None
    columns = ["source_id", "corpus", "token_index", "is_target", ROUTER_INPUTS_COLUMN]
    table = src.table(ROUTING_PREFIX + row["model_slug"], columns=columns)
    vectors = target_vectors(table, corpus.example_ids, SENSES, target)
    geometry = pair_geometry(vectors, corpus, list(row["router_input_layers"]), list(row["moe_layers"]))
    if sense_layers is None:
        return geometry
    keep = [j for j, layer in enumerate(geometry.layers) if layer in sense_layers]
    if not keep:
        return None
    layers = [geometry.layers[j] for j in keep]
    return PairGeometry(
        layers, [list(sense_layers).index(layer) for layer in layers], geometry.cosine[:, keep]
    )


def fold_hidden_state(
    controls: dict,
    kappa: np.ndarray,
    corpus: SenseCorpus,
    geometry: PairGeometry | None,
    options: BootstrapOptions,
    identity: TargetIdentity | None = None,
) -> dict:
    """`controls` with `hidden_state` added (when the atlas stores router inputs) and, without a null model,
    `all` replaced by its geometry-inclusive version (with a null model `all` stays as it is: the null's
    router inputs are not part of its fit)."""
    if geometry is None:
        return controls
    hidden, combined = hidden_state_control(kappa, corpus, geometry, options, identity)
    out = dict(controls)
    out[NAME] = hidden
    if combined is not None and "null_model" not in controls:
        out["all"] = {**combined, "replaces": controls.get("all", {}).get("method")}
    # `all` last, as the report lists it.
    return {name: out[name] for name in [*[n for n in out if n != "all"], "all"] if name in out}
