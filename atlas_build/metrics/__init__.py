"""Metrics over a routing atlas, read only through `datasets.load_dataset` (no model, tokenizer or WordNet).

`atlas metrics SOURCE --out DIR` writes into DIR:

    metrics.json              everything below (stable keys)
    report.md                 formulas, tables, which effects survive the controls, warnings
    kappa-layers.png          per-layer κ (same / different sense) and Δκ (raw, adjusted, over null) with CI bands
    scale.png                 layer-mean and peak Δκ against total and active parameters
    coactivation-<slug>.png   P(E_j | E_i) heatmaps for up to four layers
    coactivation-<slug>.npz   coactivation_counts [L, N, N] (C_ij tokens with both i and j; C_ii = load),
                              load_counts [L, N], moe_layers [L]

`metrics.json` layout (per-layer arrays are indexed by MoE layer, in the order of `model.moe_layers`;
an interval is `{"estimate", "ci_low", "ci_high"}` (95%, cluster bootstrap over lemmas); floats have 6
significant digits; NaN/undefined is null)::

    {
      "format": "routing-atlas-metrics", "format_version": 1,
      "source": str, "revision": str | null,
      "options": {"target": "first|last|all", "min_count", "n_bootstrap", "n_permutations", "confidence", "seed"},
      "synthetic": bool,                       # a synthetic model or synthetic corpus rows are present
      "random_init_models": [slug, ...],
      "corpus": {"senses": n, "sense_pairs": n, "substitutions": n | null, "traces": n | null},
      "corpora": {kind: {config: rows}},      # the user's corpora with something to measure (wic, swords, jsonl)
      "formulas": {name: formula},
      "models": {
        slug: {
          "model": {model_id, revision, architecture, model_type, n_routed_experts, top_k, n_shared_experts,
                    scoring_func, topk_method, moe_layers, n_moe_layers, total_params, active_params, engine,
                    weights_dtype, random_init, synthetic},
          "random_init": bool, "synthetic": bool, "n_tokens": int,
          "sense_pairs": null | {
            "n_pairs": {"same", "different"}, "n_lemmas": int,
            "kappa_same": interval[L], "kappa_different": interval[L],
            "delta": interval[L] + {"p_value": [L], "p_value_bh": [L]},
            "layer_mean": {"kappa_same": interval, "kappa_different": interval,
                           "delta": interval + {"p_value"}},
            "jaccard": {"same": mean J, "different": mean J},
            "context_adjusted": {"method", "n_strata", "delta": interval[L], "layer_mean": {"delta": interval}},
            "over_null": null | {"null_model": slug, "n_pairs", "layer_mean": {"delta": interval},
                                 "delta": interval[L] | null},   # per layer only when layer counts match
            "peak": {"layer_index", "layer", "delta", "ci_low", "ci_high"},
            "survives": {"raw", "context_adjusted", "over_null": "positive|negative|none|...",
                         "layer_mean_survives": bool, "null_tested": bool, "layers": [decoder layer],
                         "random_init": bool}
          },
          "substitutions": null | {"n": {relation: n}, "kappa": {relation: interval[L]},
                                   "delta": interval[L] | null,   # synonym − other-sense
                                   "layer_mean": {relation: interval, "delta": interval}},
          "probe": null | {"n_examples", "n_lemmas", "accuracy": interval, "mfs_accuracy": interval,
                           "difference": interval},
          "corpora": {kind: {"sense_pairs": null | {as above}, "probe": null | {as above} (labelled corpora),
                             "substitutions": null | {as above; delta = acceptable − rejected for swords}}},
          "experts": {"load": [L][N], "entropy": [L], "max_load_ratio": [L],
                      "coactivation": {"file", "independent_baseline", "min_support", "max_conditional": [L],
                                       "top_pairs": [L][{"i", "j", "p"}]}},
          "token_specialisation": {"min_count", "n_token_ids", "n_occurrences",
                                   "top1": {"share": [L], "shuffled": [L], "random": 1/N} | null (ids-only engine),
                                   "topk": {"share": [L], "shuffled": [L], "random": k/N}},
          "traces": null | {"n_tokens", "n_marker_tokens", "npmi": [L][N],
                            "top_experts": [L][{"expert", "npmi", "count"}],
                            "markers": {marker: {"n", "top_experts": [L][...]}},
                            "segments": {"names", "n_tokens": {name: n}, "load": {name: [L][N]},
                                         "js_divergence_think_answer": [L] | null}}
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
from atlas_build.metrics.report import render_report, summarize, write_outputs

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
