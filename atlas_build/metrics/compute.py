"""`compute_metrics`: every metric of every selected model of an atlas, as the `metrics.json` dictionary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from atlas_build.atlas.schema import MODELS, ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS, TRACES
from atlas_build.metrics.controls.geometry import PairGeometry, fold_hidden_state, router_geometry
from atlas_build.metrics.controls.regression import CONTROL_NAMES, NullModel, pair_controls
from atlas_build.metrics.controls.verdict import explained, peak, scale_rows, survival
from atlas_build.metrics.estimators.identity import TargetIdentity, target_identity
from atlas_build.metrics.estimators.overlap import TARGET_MODES, select_targets, target_rows_table
from atlas_build.metrics.estimators.predictability import atlas_predictability
from atlas_build.metrics.estimators.probe import sense_probe
from atlas_build.metrics.estimators.senses import (
    BootstrapOptions,
    SenseCorpus,
    load_sense_corpus,
    sense_pair_kappa,
    sense_pair_overlap,
    substitution_overlap,
)
from atlas_build.metrics.estimators.user_corpora import USER_CONFIGS, UserCorpus, load_user_corpora
from atlas_build.metrics.experts import blocks as ex
from atlas_build.metrics.experts.summary import expert_metrics, trace_metrics, uniform_baseline
from atlas_build.metrics.paths.compute import PathMetricsJob
from atlas_build.metrics.provenance.source import AtlasSource, SourceError
from atlas_build.metrics.provenance.verify import Provenance
from atlas_build.metrics.report.formulas import FORMULAS  # the report reads it from here too
from atlas_build.metrics.scores.compute import model_scores

log = logging.getLogger(__name__)

FORMAT = "routing-atlas-metrics"
FORMAT_VERSION = 2


@dataclass
class MetricsOptions:
    target: str = "last"
    min_count: int = 5
    n_bootstrap: int = 2000
    n_permutations: int = 999
    confidence: float = 0.95
    seed: int = 0
    budget_bytes: int = 1 << 30
    # Check the data files against manifest.json (sha256) and refuse altered ones; off: the report says so.
    verify: bool = True
    # The in-memory calibration of the controls (metrics/calibration/matrix.py) on the first selected
    # model: metrics.json["calibration"]; its own options (replicates, resamples) are recorded there.
    calibrate: bool = False
    calibration_seeds: int = 10
    calibration_resamples: int = 200
    # Sense metrics over hash-routed layers too (routing_kind "hash": experts a function of the token id).
    include_hash_layers: bool = False

    def bootstrap(self) -> BootstrapOptions:
        return BootstrapOptions(self.n_bootstrap, self.n_permutations, self.confidence, self.seed)

    def public(self) -> dict:
        """The options that change numbers (recorded in metrics.json; `budget_bytes` only changes memory)."""
        keys = ("target", "min_count", "n_bootstrap", "n_permutations", "confidence", "seed")
        return {key: getattr(self, key) for key in keys}

    def seeds(self) -> dict[str, int]:
        """Every seed the metrics use, derived from `seed`."""
        s = self.seed
        return {
            "bootstrap_raw_and_substitutions": s,
            "permutation_test": s + 1,
            "bootstrap_controls": s + 2,
            "bootstrap_probe": s + 4,
            "probe_label_permutations": s + 5,
            "token_shuffle_baseline": s,
            "uniform_routing_simulation": s + 6,
        }


@dataclass
class MetricsResult:
    """The `metrics.json` dictionary and the arrays too large for it (per model slug)."""

    metrics: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def is_synthetic(row: dict) -> bool:
    return row.get("model_id") == "synthetic" or row.get("engine") == "synthetic"


def find_null(row: dict, rows: Sequence[dict]) -> dict | None:
    """A random-init model of the same architecture and routing: same model_type, scoring_func and
    topk_method; among several, the one closest in (N, k, MoE layers). For a random-init model: another
    random-init model of it (another seed), preferring the same model id."""
    candidates = [
        r
        for r in rows
        if r["random_init"]
        and r["model_slug"] != row["model_slug"]
        and r["model_type"] == row["model_type"]
        and r["scoring_func"] == row["scoring_func"]
        and r["topk_method"] == row["topk_method"]
        and not (row["random_init"] and r.get("seed") == row.get("seed") and r["model_id"] == row["model_id"])
    ]

    def distance(r):
        return (
            r["n_routed_experts"] != row["n_routed_experts"],
            r["top_k"] != row["top_k"],
            len(r["moe_layers"]) != len(row["moe_layers"]),
            r["model_id"] != row["model_id"],
            r["model_slug"],
        )

    return min(candidates, key=distance) if candidates else None


def sense_layer_indices(row: dict, include_hash: bool = False) -> list[int]:
    """Indices into `moe_layers` of the layers the sense metrics read: every layer except, by default, those
    the models row's `routing_kind` marks `hash` (DeepSeek-V4's first layers: their experts are a lookup of the
    token id, so token identity by construction). Rows without `routing_kind` (older atlases): every layer."""
    kinds = row.get("routing_kind")
    layers = list(row["moe_layers"])
    if include_hash or not kinds:
        return list(range(len(layers)))
    return [i for i, layer in enumerate(layers) if layer >= len(kinds) or kinds[layer] != "hash"]


def hash_layers(row: dict) -> list[int]:
    """Decoder layers the models row marks as routed by a token-id hash table."""
    kinds = row.get("routing_kind") or []
    return [layer for layer in row["moe_layers"] if layer < len(kinds) and kinds[layer] == "hash"]


def routed_corpora(routing) -> frozenset[str]:
    """The corpus configs whose texts a model's routing rows hold (its `corpus` column): what it routed.

    Models of one atlas may have routed different corpora (WordNet by two models, a user's corpus by one of
    them): every per-corpus metric of a model is computed over what it routed, and a null model applies to a
    corpus only when it routed that corpus too.
    """
    import pyarrow.compute as pc

    if routing.num_rows == 0:
        return frozenset()
    return frozenset(v for v in pc.unique(routing.column("corpus")).to_pylist() if v)


def model_info(row: dict) -> dict:
    keys = [
        "model_id",
        "revision",
        "architecture",
        "model_type",
        "n_routed_experts",
        "top_k",
        "n_shared_experts",
        "scoring_func",
        "topk_method",
        "moe_layers",
        "total_params",
        "active_params",
        "engine",
        "weights_dtype",
        "random_init",
    ]
    info = {k: row.get(k) for k in keys}
    info["n_moe_layers"] = len(row["moe_layers"])
    info["synthetic"] = is_synthetic(row)
    return info


def sense_pair_metrics(
    kappa: np.ndarray,
    corpus: SenseCorpus,
    identity: TargetIdentity | None,
    row: dict,
    boot: BootstrapOptions,
    null: NullModel | None = None,
    geometry: PairGeometry | None = None,
) -> dict:
    """The `sense_pairs` block of one model: raw Δκ, the named controls (with `hidden_state` where the atlas
    stores router inputs), the peak layer and survival."""
    sp = sense_pair_overlap(kappa, corpus, boot)
    controls = pair_controls(kappa, corpus, identity, boot, null)
    sp["controls"] = fold_hidden_state(controls, kappa, corpus, geometry, boot, identity)
    # Older readers (the publisher's changelog, earlier cards) read these two names.
    sp["context_adjusted"] = sp["controls"]["context_words"]
    sp["over_null"] = None
    if "null_model" in sp["controls"]:
        result = sp["controls"]["null_model"]
        sp["over_null"] = {
            "null_model": result["null_model"],
            "n_pairs": result["n_pairs"],
            "layer_mean": result["layer_mean"],
            "delta": result["delta"],
        }
    sp["peak"] = peak(sp, row["moe_layers"])
    sp["survives"] = survival(sp, row["moe_layers"], bool(row["random_init"]))
    sp["explained"] = explained(sp)
    return sp


def compute_metrics(
    source,
    *,
    models: Sequence[str] | None = None,
    revision: str | None = None,
    options: MetricsOptions | None = None,
    cache_dir=None,
) -> MetricsResult:
    """Compute every metric for the selected models (default: all) of the atlas at `source`.

    Raises:
        SourceError: the source cannot be read, a model slug is unknown, or (`IntegrityError`) its files do
            not match its manifest.json (unless `options.verify` is off).
    """
    options = options or MetricsOptions()
    if options.target not in TARGET_MODES:
        raise ValueError(f"target must be one of {TARGET_MODES}, got {options.target!r}")
    boot = options.bootstrap()
    provenance = Provenance(source, revision, verify=options.verify)
    # The rows computed on are proven to be the verified files' (a cache keyed by them, rows checked).
    src = AtlasSource(
        source, revision=revision, cache_dir=cache_dir, manifest=provenance.manifest, verify=options.verify
    )
    rows = src.models()
    by_slug = {r["model_slug"]: r for r in rows}
    if models:
        unknown = [m for m in models if m not in by_slug]
        if unknown:
            raise SourceError(f"unknown model slug(s) {unknown}; the atlas has: {sorted(by_slug) or 'none'}")
    selected = list(dict.fromkeys(models)) if models else sorted(by_slug)
    nulls = {slug: find_null(by_slug[slug], rows) for slug in selected}
    read = {MODELS, SENSES, SENSE_PAIRS, SUBSTITUTIONS, TRACES, *USER_CONFIGS}
    read |= {ROUTING_PREFIX + s for s in selected} | {
        ROUTING_PREFIX + n["model_slug"] for n in nulls.values() if n
    }
    provenance.start({c for c in read if src.has(c)})

    try:
        senses, pairs = src.table(SENSES), src.table(SENSE_PAIRS)
        substitutions = src.table(SUBSTITUTIONS)
        corpus: SenseCorpus | None = None
        if senses is not None and pairs is not None and pairs.num_rows:
            corpus = load_sense_corpus(senses, pairs)
        notes: list[str] = []
        if corpus is None:
            notes.append("no sense pairs in the atlas: sense-pair overlap and the probe are not computed")
        if substitutions is None:
            notes.append("no substitutions config: substitution overlap is not computed")
        if not src.has(TRACES):
            notes.append("no reasoning traces in the atlas: the traces metrics are null")
        if not options.verify:
            notes.append("the data files were NOT checked against manifest.json (--no-verify)")
        # The user's corpora (wic, swords, jsonl): the same metrics, once per corpus, under "corpora".
        user_corpora = load_user_corpora(src)
        user_cache: dict = {}

        kappas: dict[str, np.ndarray] = {}
        identities: dict[str, TargetIdentity] = {}

        def sense_targets(slug: str, routing=None):
            routing = routing if routing is not None else src.routing(slug)
            n_experts = by_slug[slug]["n_routed_experts"]
            return select_targets(
                target_rows_table(routing, SENSES), corpus.example_ids, options.target, n_experts
            )

        def kappa_of(slug: str, targets=None) -> np.ndarray:
            if slug not in kappas:
                row = by_slug[slug]
                targets = targets if targets is not None else sense_targets(slug)
                kappa = sense_pair_kappa(targets, corpus, row["top_k"], row["n_routed_experts"])
                kappas[slug] = kappa[:, sense_layer_indices(row, options.include_hash_layers)]
            return kappas[slug]

        def identity_of(slug: str, routing=None) -> TargetIdentity:
            if slug not in identities:
                routing = routing if routing is not None else src.routing(slug)
                identities[slug] = target_identity(routing, corpus.example_ids, corpus.form)
            return identities[slug]

        out_models: dict[str, dict] = {}
        arrays: dict[str, dict[str, np.ndarray]] = {}
        planter = None
        routed: dict[str, frozenset[str]] = {}

        def routed_by(name: str) -> frozenset[str]:
            if name not in routed:
                routed[name] = routed_corpora(src.routing(name))
            return routed[name]

        for slug in selected:
            row = by_slug[slug]
            log.info("metrics for %s", slug)
            routing = src.routing(slug)
            own = routed_by(slug)
            # The null model of a corpus is the model's null only where it routed that corpus too.
            null_senses = (
                nulls[slug] if nulls[slug] and SENSES in routed_by(nulls[slug]["model_slug"]) else None
            )
            wordnet = corpus if SENSES in own else None
            missing = _unrouted(slug, own, corpus, substitutions, user_corpora)
            notes.extend(missing)
            n_experts, top_k, n_layers = row["n_routed_experts"], row["top_k"], len(row["moe_layers"])
            entry: dict = {
                "model": model_info(row),
                "random_init": bool(row["random_init"]),
                "synthetic": is_synthetic(row),
                "n_tokens": routing.num_rows,
                "routed_corpora": sorted(own),
                "sense_pairs": None,
                "substitutions": None,
                "probe": None,
            }
            # Large atlases: the per-layer pass runs in forked workers while the sense metrics run here.
            job = ex.ExpertPassJob(
                routing,
                n_experts,
                n_layers,
                top_k,
                min_count=options.min_count,
                seed=options.seed,
                budget_bytes=options.budget_bytes,
            )
            # Routing paths across layers (metrics/paths/compute.py): a forked worker of its own on large atlases.
            path_null = null_senses
            path_job = PathMetricsJob(
                routing,
                row,
                wordnet,
                options=boot,
                target=options.target,
                min_count=options.min_count,
                null_routing=src.routing(path_null["model_slug"]) if path_null else None,
                null_row=path_null,
            )
            try:
                if wordnet is not None:
                    targets = sense_targets(slug, routing)
                    null_row = null_senses
                    null = None
                    if null_row is not None:
                        name = null_row["model_slug"]
                        null = NullModel(name, kappa_of(name), identity_of(name))
                    keep = sense_layer_indices(row, options.include_hash_layers)
                    sense_row = {**row, "moe_layers": [row["moe_layers"][i] for i in keep]}
                    entry["sense_pairs"] = sense_pair_metrics(
                        kappa_of(slug, targets),
                        corpus,
                        identity_of(slug, routing),
                        sense_row,
                        boot,
                        null,
                        router_geometry(src, row, corpus, options.target, sense_row["moe_layers"]),
                    )
                    hashed = hash_layers(row)
                    entry["sense_pairs"]["sense_layers"] = sense_row["moe_layers"]
                    entry["sense_pairs"]["hash_layers_excluded"] = (
                        [] if options.include_hash_layers else hashed
                    )
                    if hashed and not options.include_hash_layers:
                        notes.append(
                            f"{slug}: decoder layers {hashed} route by a token-id hash table (routing_kind "
                            "hash); the sense metrics leave them out by default (their experts are a function "
                            "of the token id: token identity by construction, a built-in token-identity "
                            "reference); per-layer sense arrays cover layers "
                            f"{sense_row['moe_layers']}"
                        )
                    entry["probe"] = sense_probe(targets, corpus, boot, identity_of(slug))
                    if options.calibrate and planter is None:
                        planter = calibration_planter(corpus, identity_of(slug), routing, row, options.seed)
                        planter_row = row
                    if substitutions is not None and substitutions.num_rows and SUBSTITUTIONS in own:
                        sub_targets = select_targets(
                            target_rows_table(routing, SUBSTITUTIONS),
                            substitutions.column("substitution_id"),
                            options.target,
                            n_experts,
                        )
                        entry["substitutions"] = substitution_overlap(
                            targets, sub_targets, corpus, substitutions, top_k, n_experts, boot
                        )
                entry["predictability"] = atlas_predictability(src, row, boot)
                entry["corpora"] = {
                    uc.kind: user_corpus_metrics(
                        uc,
                        slug,
                        routing,
                        src,
                        by_slug,
                        nulls[slug]
                        if nulls[slug] and uc.examples_config in routed_by(nulls[slug]["model_slug"])
                        else None,
                        options,
                        user_cache,
                    )
                    for uc in user_corpora
                    if uc.examples_config in own
                }
                entry["paths"], path_arrays = path_job.result()
                # Router scores beyond the top-k (metrics/scores/compute.py): None unless built with --scores.
                entry["scores"] = model_scores(
                    src, row, routing, wordnet, options=boot, target=options.target
                )
                simulated = uniform_baseline(
                    row, routing.num_rows, options.min_count, options.seeds()["uniform_routing_simulation"]
                )
                ep = job.result()
            finally:
                job.close()
                path_job.close()
            parts, model_arrays = expert_metrics(ep, row, slug, options.min_count, simulated)
            entry.update(parts)
            entry["traces"] = trace_metrics(ep, options.min_count)
            out_models[slug] = entry
            arrays[slug] = {**model_arrays, **path_arrays}
    except Exception:
        # Altered files often fail to load at all: say that they do not match the manifest, if so.
        provenance.finish()
        raise
    provenance.finish()
    record = provenance.record(options.seeds(), options.public(), rows=src.checks)
    calibration = None
    if planter is not None:
        from atlas_build.metrics.calibration.matrix import CalibrationOptions, calibration_summary

        calibration = calibration_summary(
            planter,
            CalibrationOptions(
                seeds=options.calibration_seeds,
                n_resamples=options.calibration_resamples,
                confidence=options.confidence,
                seed=options.seed,
            ),
            list(planter_row["moe_layers"]),
            model=planter_row["model_slug"],
            manifest_sha256=record.get("manifest_sha256"),
        )
    elif options.calibrate:
        notes.append("--calibrate: no selected model has sense pairs, nothing to calibrate")
    metrics = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "revision": revision,
        "options": options.public(),
        "provenance": record,
        "synthetic": any(is_synthetic(by_slug[s]) for s in selected) or _synthetic_corpus(senses),
        "random_init_models": [s for s in selected if by_slug[s]["random_init"]],
        "corpus": {
            "senses": senses.num_rows if senses is not None else None,
            "sense_pairs": pairs.num_rows if pairs is not None else None,
            "substitutions": substitutions.num_rows if substitutions is not None else None,
            "traces": src.table(TRACES).num_rows if src.has(TRACES) else None,
        },
        "corpora": {uc.kind: uc.counts for uc in user_corpora},
        "controls": list(CONTROL_NAMES),
        "formulas": FORMULAS,
        "models": out_models,
        "scale": scale_rows(out_models),
        "calibration": calibration,
        "notes": notes,
    }
    return MetricsResult(metrics, arrays)


def calibration_planter(corpus: SenseCorpus, identity: TargetIdentity, routing, row: dict, seed: int):
    """The in-memory calibration's view of one model: its sense pairs, target identity and token counts."""
    from atlas_build.metrics.calibration.matrix import Planter

    ids, counts = np.unique(routing.column("token_id").to_numpy(), return_counts=True)
    return Planter(
        corpus,
        identity,
        dict(zip(ids.tolist(), counts.tolist(), strict=True)),
        row["n_routed_experts"],
        row["top_k"],
        len(row["moe_layers"]),
        seed=seed,
    )


def user_corpus_metrics(
    uc: UserCorpus,
    slug: str,
    routing,
    src: AtlasSource,
    by_slug: dict[str, dict],
    null_row: dict | None,
    options: MetricsOptions,
    cache: dict,
) -> dict:
    """One user's corpus for one model: the sense-pair block (`sense_pair_metrics`: raw Δκ, its controls, peak
    and survival), the probe (labelled corpora only) and the substitution block, from that corpus's rows.

    `cache` keeps each (corpus, model)'s κ and target identity, so a null model's are computed once.
    """
    boot = options.bootstrap()
    row = by_slug[slug]
    n_experts, top_k = row["n_routed_experts"], row["top_k"]

    def targets_of(name: str, routing_rows=None):
        routing_rows = routing_rows if routing_rows is not None else src.routing(name)
        rows_of = target_rows_table(routing_rows, uc.examples_config)
        return select_targets(
            rows_of, uc.corpus.example_ids, options.target, by_slug[name]["n_routed_experts"]
        )

    def kappa_of(name: str, targets=None) -> np.ndarray:
        key = ("kappa", uc.kind, name)
        if key not in cache:
            targets = targets if targets is not None else targets_of(name)
            m = by_slug[name]
            cache[key] = sense_pair_kappa(targets, uc.corpus, m["top_k"], m["n_routed_experts"])
        return cache[key]

    def identity_of(name: str, routing_rows=None) -> TargetIdentity:
        key = ("identity", uc.kind, name)
        if key not in cache:
            routing_rows = routing_rows if routing_rows is not None else src.routing(name)
            cache[key] = target_identity(
                routing_rows, uc.corpus.example_ids, uc.corpus.form, uc.examples_config
            )
        return cache[key]

    targets = targets_of(slug, routing)
    out: dict = {"sense_pairs": None, "probe": None, "substitutions": None}
    if uc.has_pairs:
        null = None
        if null_row is not None:
            name = null_row["model_slug"]
            null = NullModel(name, kappa_of(name), identity_of(name))
        out["sense_pairs"] = sense_pair_metrics(
            kappa_of(slug, targets), uc.corpus, identity_of(slug, routing), row, boot, null
        )
        if uc.labelled:
            out["probe"] = sense_probe(targets, uc.corpus, boot, identity_of(slug, routing))
    if uc.substitutions is not None:
        sub_targets = select_targets(
            target_rows_table(routing, uc.substitutions_config),
            uc.substitutions.column("substitution_id"),
            options.target,
            n_experts,
        )
        out["substitutions"] = substitution_overlap(
            targets, sub_targets, uc.corpus, uc.substitutions, top_k, n_experts, boot, contrast=uc.contrast
        )
    return out


def _unrouted(slug: str, own: frozenset[str], corpus, substitutions, user_corpora) -> list[str]:
    """The notes on the atlas's corpora that model `slug` did not route (its metrics on them are not computed)."""
    held = []
    if corpus is not None:
        held.append((SENSES, "WordNet (senses)"))
    if substitutions is not None and substitutions.num_rows:
        held.append((SUBSTITUTIONS, "WordNet (substitutions)"))
    held += [(uc.examples_config, uc.kind) for uc in user_corpora]
    return [
        f"{slug} did not route the {name} corpus of this atlas: its metrics on it are not computed "
        f"(`atlas build --model ... --corpus ...` into this atlas adds them)"
        for config, name in held
        if config not in own
    ]


def _synthetic_corpus(senses) -> bool:
    if senses is None or not senses.num_rows:
        return False
    import pyarrow.compute as pc

    return bool(pc.any(pc.equal(senses.column("source"), "synthetic")).as_py())
