"""The card's sections that report findings and checks: validation, the engine's provenance, the routing audit,
the routing metrics. One function per section, each reading the atlas directory and returning what its part of
the template shows (a new section: one function here, its name in `render.SECTIONS`, its part of the template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atlas_build.atlas.audits import PART_NAMES, PARTS, failed_parts
from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest, config_data_sha256
from atlas_build.atlas.schema import ROUTING_PREFIX, SENSE_PAIRS, SENSES
from atlas_build.atlas.writer import sha256_file
from dataset_cards.vocabulary import METRICS_DIR, METRICS_JSON, METRICS_REPORT, RANDOM_INIT, VALIDATION_JSON


def read_validation(root: Path) -> dict[str, Any] | None:
    """`DIR/validation.json` with a `stale` note when it predates the manifest, or None when absent."""
    root = Path(root)
    path = root / VALIDATION_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return {"passed": False, "unreadable": str(error), "summary": {}, "results": [], "stale": None}
    manifest_path = AtlasLayout(root).manifest_path
    stale = None
    if data.get("manifest_sha256"):
        if data["manifest_sha256"] != sha256_file(manifest_path):
            stale = "it was run on another version of manifest.json"
    elif path.stat().st_mtime < manifest_path.stat().st_mtime:
        stale = "it is older than manifest.json"
    data["stale"] = stale
    return data


# builds[].engine.provenance keys shown on the card, in this order, with their labels.
PROVENANCE_FIELDS = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("accelerate", "accelerate"),
    ("vllm", "vLLM"),
    ("flashinfer", "FlashInfer"),
    ("device", "device"),
    ("device_count", "devices"),
    ("cuda", "CUDA"),
    ("dtype", "dtype"),
    ("attention", "attention"),
    ("experts", "experts implementation"),
    ("moe_backend", "MoE backend"),
    ("cuda_graphs", "CUDA graphs"),
    ("batch_size", "batch size"),
    ("max_num_batched_tokens", "max batched tokens"),
    ("threads", "CPU threads"),
)


def engine_provenance(provenance: dict[str, Any] | None) -> str:
    """One line of what produced a build's routing (library versions, device, numerics, batching)."""
    if not provenance:
        return ""
    parts = []
    for key, label in PROVENANCE_FIELDS:
        value = provenance.get(key)
        if value is None or value == {}:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off (eager)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        parts.append(f"{label} {value}")
    return "; ".join(parts)


def read_metrics(root: Path) -> dict[str, Any] | None:
    """`DIR/metrics/metrics.json`, None when absent, or `{"unreadable": why}` (the card then says so)."""
    path = Path(root) / METRICS_DIR / METRICS_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        return {"unreadable": f"{type(error).__name__}: {error}".splitlines()[0][:200]}
    if not isinstance(data, dict):
        return {"unreadable": f"it holds a JSON {type(data).__name__}, not an object"}
    return data


def metrics_mismatch(metrics: dict[str, Any], manifest: Manifest) -> list[str]:
    """Ways `metrics.json` disagrees with the atlas (computed on other data); empty when it fits."""
    problems = []
    configs = manifest.configs()
    slugs = {c[len(ROUTING_PREFIX) :] for c in configs if c.startswith(ROUTING_PREFIX)}
    measured = set(metrics.get("models") or {})
    if measured - slugs:
        problems.append(f"metrics of model(s) not in the atlas: {', '.join(sorted(measured - slugs))}")
    if slugs - measured:
        problems.append(
            f"model(s) without metrics: {', '.join(sorted(slugs - slugs.intersection(measured)))}"
        )
    corpus = metrics.get("corpus") or {}
    for config, key in ((SENSES, "senses"), (SENSE_PAIRS, "sense_pairs")):
        counted = corpus.get(key)
        rows = configs.get(config, {}).get("rows", 0)
        if counted is not None and counted != rows:
            problems.append(f"metrics counted {counted} {config} rows, the atlas has {rows}")
    calibration = metrics.get("calibration") or {}
    computed_on = (metrics.get("provenance") or {}).get("manifest_sha256")
    if calibration and calibration.get("manifest_sha256") != computed_on:
        problems.append("the calibration in metrics.json ran on another manifest than its metrics")
    return problems


def audit_lines(manifest: Manifest, slug: str, random_init: bool = False) -> list[str]:
    """The card's sentence for the latest `atlas audit` of `routing-<slug>`, marked stale when the routing
    files changed since (so the card never claims an audit of other data)."""
    config = ROUTING_PREFIX + slug
    records = [a for a in manifest.audits if a.get("config") == config]
    if not records:
        return []
    audit = records[-1]
    try:
        share = 100.0 * audit["identical_sets"] / audit["token_layers"] if audit["token_layers"] else 0.0
        parts = audit.get("parts")
        if isinstance(parts, dict):
            shown = []
            for name in PARTS:
                part = parts[name]
                if not part.get("checked", True):
                    shown.append(f"{PART_NAMES[name]}: not checked (ids only)")
                    continue
                shown.append(
                    f"{100.0 * part['share']:.2f}% {PART_NAMES[name]} ({part['agree']} of {part['trials']}; "
                    f"95% upper bound on the mismatch rate {100.0 * part['mismatch_upper']:.2f}%, threshold "
                    f"{100.0 * part['threshold']:.2f}%, "
                    + ("passed" if part["passed"] else "**FAILED**")
                    + ")"
                )
            verdict = (
                "passed"
                if audit.get("passed")
                else f"**FAILED** ({', '.join(failed_parts(audit)) or 'record'})"
            )
            line = (
                f"Routing audited on {audit['tokens']} tokens ({audit['texts']} texts, seed {audit['seed']}) "
                f"against `{audit['model']}` with the hf engine: " + "; ".join(shown) + f"; {verdict}."
            )
        else:
            line = (
                f"Routing audited on {audit['tokens']} tokens ({audit['texts']} texts, seed {audit['seed']}) "
                f"against `{audit['model']}` with the hf engine: {share:.2f}% identical expert sets "
                f"({audit['identical_sets']} of {audit['token_layers']} token-layers; 95% upper bound on the "
                f"mismatch rate {100.0 * audit['mismatch_upper']:.2f}%), "
                + ("passed" if audit.get("passed") else "**FAILED**")
                + f" (threshold {100.0 * audit['threshold']:.2f}%; order and weights were not checked by this "
                "older audit)."
            )
    except (KeyError, TypeError, ZeroDivisionError, AttributeError):
        return [f"An audit record of `{config}` in manifest.json is malformed: rerun `atlas audit`."]
    if random_init:
        line += " The audited model is random-init: agreement proves the plumbing, not a finding."
    if audit.get("data_sha256") != config_data_sha256(manifest, config):
        line = f"**Stale:** {line} The routing files changed since: rerun `atlas audit`."
    return [line]


def metrics_summary(metrics: dict[str, Any]) -> str:
    """The metrics package's markdown summary, or a minimal table from `metrics.json` if it is unavailable."""
    try:
        from atlas_build.metrics.report.markdown import summarize
    except ImportError:  # metrics package absent in this install: render the headline numbers ourselves
        summarize = None
    if summarize is not None:
        try:
            text = summarize(metrics).strip()
            # The card has its own "Routing metrics" heading.
            if text.startswith("#"):
                text = text.split("\n", 1)[1].strip() if "\n" in text else ""
            return text
        except (KeyError, TypeError, ValueError):  # a metrics.json of another format version
            pass
    lines = [
        "| model | Δκ same − different sense (layer mean) | 95% CI | under all controls | survives |",
        "|---|---:|---|---|---|",
    ]
    for slug, entry in (metrics.get("models") or {}).items():
        sense_pairs = (entry or {}).get("sense_pairs") or {}
        delta = (sense_pairs.get("layer_mean") or {}).get("delta") or {}
        every = ((((sense_pairs.get("controls") or {}).get("all") or {}).get("layer_mean")) or {}).get(
            "delta"
        ) or {}
        survives = (sense_pairs.get("survives") or {}).get("layer_mean_survives")
        label = f"`{slug}`" + (f" ({RANDOM_INIT})" if entry.get("random_init") else "")
        lines.append(
            f"| {label} | {delta.get('estimate')} | [{delta.get('ci_low')}, {delta.get('ci_high')}] "
            f"| {every.get('estimate')} [{every.get('ci_low')}, {every.get('ci_high')}] | {survives} |"
        )
    return "\n".join(lines)


def validation_context(root: Path, manifest: Manifest) -> dict[str, Any]:
    """The Validation section: `validation.json` (None when absent) and its results that did not pass."""
    validation = read_validation(root)
    problems = [r for r in (validation or {}).get("results", []) if r.get("status") not in ("passed",)]
    return {"validation": validation, "validation_problems": problems}


def metrics_context(root: Path, manifest: Manifest) -> dict[str, Any]:
    """The Routing metrics section (None without `metrics/metrics.json`), with what makes it doubtful."""
    root = Path(root)
    metrics = read_metrics(root)
    if metrics is None:
        return {"metrics": None}
    if "unreadable" in metrics:
        return {
            "metrics": {
                "summary": "",
                "problems": [f"{METRICS_DIR}/{METRICS_JSON} is unreadable ({metrics['unreadable']})"],
                "report": False,
                "options": {},
            }
        }
    problems = metrics_mismatch(metrics, manifest)
    metrics_path = root / METRICS_DIR / METRICS_JSON
    if not problems and metrics_path.stat().st_mtime < AtlasLayout(root).manifest_path.stat().st_mtime:
        problems = ["metrics.json is older than manifest.json"]
    return {
        "metrics": {
            "summary": metrics_summary(metrics),
            "problems": problems,
            "report": (root / METRICS_DIR / METRICS_REPORT).exists(),
            "options": metrics.get("options") or {},
        }
    }
