"""Metrics over a routing atlas, read only through `datasets.load_dataset` (no model, tokenizer or WordNet).

`atlas metrics SOURCE --out DIR` writes into DIR:

    metrics.json              everything below (stable keys)
    report.md                 formulas, tables, which effects survive the controls, warnings
    kappa-layers.png          per-layer κ (same / different sense) and Δκ raw next to every control, with CI bands
    scale.png                 layer-mean and peak Δκ against total and active parameters
    coactivation-<slug>.png   P(E_j | E_i) heatmaps for up to four layers
    coactivation-<slug>.npz   coactivation_counts [L, N, N] (C_ij tokens with both i and j; C_ii = load),
                              coactivation_adjacent_counts [L, N, N] (OLMoE-style: rank-adjacent only; weighted
                              engines), load_counts [L, N], moe_layers [L],
                              path_transition_counts [L-1, N, N] (top-1 at MoE layer i -> top-1 at i+1)
    paths-transitions-<slug>.png, paths-agreement.png, paths-diversity.png   routing paths across layers
    scores-<slug>.png         selection margins and the sense effect on confident targets (--scores)

`atlas metrics calibrate DIR --out OUT` (`calibrate.py`) checks the controls on planted copies of an atlas.

`metrics.json` layout (per-layer arrays are indexed by MoE layer, in the order of `model.moe_layers`;
an interval is `{"estimate", "ci_low", "ci_high"}` (95%, cluster bootstrap over lemmas); floats have 6
significant digits; NaN/undefined is null)::

    {
      "format": "routing-atlas-metrics", "format_version": 2,
      "source": str, "revision": str | null,
      "options": {"target": "first|last|all", "min_count", "n_bootstrap", "n_permutations", "confidence", "seed"},
      "provenance": {"manifest_sha256", "manifest_code_version", "data_files": {path: sha256}, "verified": bool,
                     "verification": str, "code_version", "options", "seeds": {name: int}},
      "controls": ["context_words", "token_identity", "position", "neighbours", "null_model", "all"],
      "synthetic": bool,                       # a synthetic model or synthetic corpus rows are present
      "random_init_models": [slug, ...],
      "corpus": {"senses": n, "sense_pairs": n, "substitutions": n | null, "traces": n | null},
      "corpora": {kind: {config: rows}},      # the user's corpora with something to measure (wic, swords, jsonl)
      "formulas": {name: formula},
      "calibration": null | {                  # --calibrate: metrics/calibration/matrix.py calibration_summary()
          "method", "manifest_sha256", "model", "n_pairs", "n_lemmas", "options",
          "matrix": {"sense_layers", "sense_strength", "confound_strength", "phrasing", "truth": [L],
                     "sense_only": {name: {"keeps", "layer_mean"}},
                     "confounds": {confound: {"follows", "removed_by", "raw_layer_mean", "raw_ci_above_0",
                                              "raw_strength_in_half_widths", "passed",
                                              "cells": {name: {"removes", "keeps", "under_corrects_at",
                                                               "under_corrects_layer_mean", "over_corrects_at",
                                                               "left_of_confound", "sense_residual"}}}}},
          "false_positive_rate": {"nominal", "n_replicates", "layers",
                                  "controls": {name: {"per_layer": [L], "layer_mean", "p_above_nominal": [L],
                                                      "above_nominal_at": [layer]}}},
          "power": {"strengths", "delta_kappa": [S][L], "layers",
                    "controls": {name: {"min_strength": [L], "min_delta_kappa": [L]}}},
          "passed": {"matrix": bool, "false_positive_rate": bool}},
      "models": {
        slug: {
          "model": {model_id, revision, architecture, model_type, n_routed_experts, top_k, n_shared_experts,
                    scoring_func, topk_method, moe_layers, n_moe_layers, total_params, active_params, engine,
                    weights_dtype, random_init, synthetic},
          "random_init": bool, "synthetic": bool, "n_tokens": int,
          "sense_pairs": null | {
            "n_pairs": {"same", "different"}, "n_lemmas": int,
            "kappa_same": interval[L], "kappa_different": interval[L],
            "delta": interval[L] + {"p_value": [L], "p_value_bh": [L], "p_value_interval": [L][low, high]},
            "layer_mean": {"kappa_same": interval, "kappa_different": interval,
                           "delta": interval + {"p_value", "p_value_interval": [low, high]}},
            "jaccard": {"same": mean J, "different": mean J},
            "controls": {name: {"method": str, "delta": interval[L] | null, "layer_mean": {"delta": interval},
                                "n_pairs", "n_columns", ("null_model": slug), ("error": str: design refused)}},
                         # with --router-inputs (metrics/controls/geometry.py): "hidden_state": {"method",
                         # "delta": interval[L] | null (null unless every MoE layer is stored), "delta_at_layers",
                         # "layer_mean", "raw": {"delta_at_layers", "layer_mean"}, "explained": interval,
                         # "layers", "n_pairs", "n_bins"}; "all" then adds router-input similarity too
            "context_adjusted": = controls.context_words, "over_null": null | from controls.null_model,
            "peak": {"layer_index", "layer", "delta", "ci_low", "ci_high"},
            "survives": {"raw", "controls": {name: "positive|negative|none|untested"},
                         "per_layer": {"raw" | name: [L]}, "removed_by": [name],
                         "context_adjusted", "over_null", "layer_mean_survives": bool, "null_tested": bool,
                         "layers": [decoder layer], "random_init": bool},
            "explained": {"basis", "raw_layer_mean", "raw_ci_excludes_0",   # controls/verdict.py explained()
                          "share_removed": {name: float | null},
                          "share_removed_per_layer_mean": {name: float | null}}
          },
          "substitutions": null | {"n": {relation: n}, "kappa": {relation: interval[L]},
                                   "delta": interval[L] | null,   # synonym − other-sense
                                   "layer_mean": {relation: interval, "delta": interval}},
          "probe": null | {"n_examples", "n_lemmas", "accuracy": interval, "mfs_accuracy": interval,
                           "difference": interval,
                           "null": {"method", "n_permutations", "mean", "range", "accuracy_minus_null_mean",
                                    "p_value", "p_value_interval"},
                           "lexical": {"context_words" | "token_identity" | "lexical":
                                       {"accuracy": interval, "difference": interval}},
                           "calibrated": {"beats_mfs", "beats_null", "beats_lexical"}},
          "corpora": {kind: {"sense_pairs": null | {as above}, "probe": null | {as above} (labelled corpora),
                             "substitutions": null | {as above; delta = acceptable − rejected for swords}}},
          "experts": {"load": [L][N], "entropy": [L], "max_load_ratio": [L],
                      "load_baseline": {"uniform_share", "simulated_entropy", "simulated_max_load_ratio"},
                      "coactivation": {"file", "independent_baseline", "min_support",
                                       "baseline": {"method", "n_group", "topk_group", "same_group",
                                                    "other_group", "unconstrained"},
                                       "simulated": {"method", "entropy", "max_load_ratio", "max_conditional",
                                                     "max_lift"},
                                       "max_conditional": [L], "max_lift": [L],
                                       "top_pairs" | "top_pairs_lift": [L][{"i", "j", "p", "baseline", "lift"}],
                                       "olmoe": null | {"definition", "mean_conditional": [L],
                                                        "mean_conditional_all_pairs": [L]}}},
          "token_specialisation": {"min_count", "n_token_ids", "n_occurrences",
                                   "top1": {"share": [L], "shuffled": [L], "random": 1/N} | null (ids-only engine),
                                   "topk": {"share": [L], "shuffled": [L], "random": k/N},
                                   "olmoe": {"definition", "n_token_ids", "n_singletons",
                                             "top1_share": [L] | null, "topk_share": [L]}},
          "traces": null | {"n_tokens", "n_marker_tokens", "npmi": [L][N],
                            "top_experts": [L][{"expert", "npmi", "count"}],
                            "markers": {marker: {"n", "top_experts": [L][...]}},
                            "segments": {"names", "n_tokens": {name: n}, "load": {name: [L][N]},
                                         "js_divergence_think_answer": [L] | null}},
          "paths": {                                   # metrics/paths/compute.py (routing paths across layers)
            "basis": str, "target": "first|last",
            "transitions": null (ids-only engine) | {"basis": "top-1", "distances": {"1"|"2"|"4": {
                "from_layers", "to_layers", "mi_bits", "mi_shuffled_bits", "max_lift",
                "top": [[{"from", "to", "p", "lift", "count"}]]}}},
            "diversity": {"min_count", "population", "n_token_ids", "n_occurrences", "n_token_ids_seen",
                "windows": {"1"|"2"|"4"|"all": {
                "width", "top1"|"topk": {"layers_start", "distinct_share", "distinct_share_shuffled",
                "h_path_given_token_bits", "h_path_given_shuffled_token_bits"} | null}}},
            "sense_entropy": null | {"n_targets", "n_token_ids", "n_permutations", "windows": {w: {
                "h_path_given_token_bits", "h_path_given_token_sense_bits", "gain_bits", "null_mean_bits",
                "null_q95_bits", "p_value"}}},
            "agreement": null | {"n_pairs", "n_lemmas", "n_permutations", "same_target_token": {"same", "different"},
                "per_layer": {"delta": interval[L], "same": [L], "different": [L]},
                "windows": {w: {"width", "first_layers", "same", "different", "per_start_delta",
                                "delta": interval + {"p_value"},
                                "controls": {"token_identity"|"context_words"|"all"|"null_model":
                                             {"method", "delta": interval}},
                                "survives": bool}}}},
          "predictability": null | {                   # metrics/estimators/predictability.py
            "method", "predictors": ["token", "router_input", "previous"], "layers": [decoder layer], "chance",
            "n_texts_train", "n_texts_test", "n_tokens_test",
            "accuracy": {predictor: interval[L] (None where not computed) | null (router_input: no vectors)}},
          "scores": null | {                           # metrics/scores/compute.py (built with --scores M)
            "scores_top_m", "near_tie", "margin_defined_share": [L],
            "margin_quantiles": {"q10", "q50", "q90": [L]}, "near_tie_share": [L],
            "group_overridden_share": [L], "note": str | null,
            "confident_sense": null | {"threshold", "all"|"confident": {"delta": interval[L],
                                       "layer_mean": interval, "n_pairs": {"same", "different": [L]}}}}
        }
      },
      "scale": [{"model_slug", "total_params", "active_params", "random_init", "synthetic",
                 "delta_layer_mean": interval, "delta_peak": {...}}],
      "figures": {"kappa": file, "scale": file, "coactivation-<slug>": file},
      "notes": [str]
    }

Every formula is in its function's docstring and in `metrics.json["formulas"]` / the report.
"""

from __future__ import annotations

from pathlib import Path

from atlas_build.metrics.compute import MetricsOptions, MetricsResult, compute_metrics
from atlas_build.metrics.report.markdown import render_report, summarize, write_outputs

__all__ = [
    "MetricsOptions",
    "MetricsResult",
    "compute_metrics",
    "render_report",
    "run_metrics",
    "summarize",
    "write_outputs",
]


def run_metrics(source, out_dir, *, models=None, revision=None, options=None, cache_dir=None) -> dict:
    """Compute and write everything; returns the `metrics.json` dictionary as written."""
    result = compute_metrics(source, models=models, revision=revision, options=options, cache_dir=cache_dir)
    return write_outputs(result, Path(out_dir))
