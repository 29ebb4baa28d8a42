"""Render `DIR/README.md` (the dataset card) and `DIR/LICENSE.md` from the atlas itself.

(Over 500 lines: the card is one document; its readers of the atlas, its sections and its release
variants are kept together so that what the card claims is checked against one renderer.)

Everything on the card is read from the atlas directory: `manifest.json` (configs, rows, builds, corpus
counts), the Parquet schemas and the `models` rows, `validation.json` (written by `atlas validate DIR`) and
`metrics/metrics.json` (written by `atlas metrics DIR --out DIR/metrics`) when they exist. Nothing here
imports the engines, models, corpora or the publishing code.

    >>> write_card(Path("atlas-demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import pprint
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest, config_data_sha256, refuse_published_release
from atlas_build.atlas.schema import (
    JSONL_EXAMPLES,
    JSONL_PAIRS,
    MODELS,
    ROUTING_PREFIX,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    SWORDS_EXAMPLES,
    SWORDS_SUBSTITUTIONS,
    TEXTS,
    TRACES,
    WIC_EXAMPLES,
    WIC_PAIRS,
)
from atlas_build.atlas.writer import sha256_file, write_text_atomic

TEMPLATE = Path(__file__).with_name("template.md")
TEMPLATES_DIR = Path(__file__).with_name("templates")

LICENSE_FILE = "LICENSE.md"
VALIDATION_JSON = "validation.json"
# `atlas metrics DIR --out DIR/metrics`: the convention the card and the publisher read.
METRICS_DIR = "metrics"
METRICS_JSON = "metrics.json"
METRICS_REPORT = "report.md"

PRETTY_NAME = "routing-atlas: MoE routing over WordNet senses"
PAPER_ARXIV = "2502.10928"
WORDNET_LICENSE_URL = "https://wordnet.princeton.edu/license-and-commercial-use"
CODE_LICENSE = "Apache-2.0"
RANDOM_INIT = "random-init"
# The card ends with the context it was rendered with, so `atlas validate` can render it again and compare.
CONTEXT_COMMENT = "routing-atlas-card-context"
# What may differ between the card and a fresh rendering of it: the date and the validation results (the
# report is written after the card, by `atlas validate`).
VALIDATION_HEADING = "## Validation"

SUMMARY = (
    "For every token of WordNet-derived sense corpora (and reasoning traces, when present), and every MoE "
    "layer of each routed model: the top-k experts the router chose and their gate weights. Built to test "
    "whether Mixture-of-Experts routing follows word senses or only token identity, as in *Probing Semantic "
    "Routing in Large Mixture-of-Expert Models* (Olson et al., Findings of EMNLP 2025, arXiv:2502.10928)."
)

CONFIG_DESCRIPTIONS = {
    SENSES: "a WordNet 3.0 example sentence of a polysemous lemma, with the lemma's span",
    SENSE_PAIRS: "two examples of one lemma, same sense or different sense (WiC-like)",
    SUBSTITUTIONS: "an example with its target replaced by a synonym or an other-sense lemma",
    TRACES: "a reasoning trace: formatted text and its segment spans",
    MODELS: "a routed model: architecture, routing hyper-parameters, sizes, engine",
    WIC_EXAMPLES: "a WiC sentence, with its target's span (two per WiC pair)",
    WIC_PAIRS: "a WiC pair: two sentences sharing a target, same sense or not (WiC's gold label)",
    SWORDS_EXAMPLES: "a SWORDS target in its context",
    SWORDS_SUBSTITUTIONS: "a SWORDS context with its target replaced by a human-rated substitute",
    JSONL_EXAMPLES: "a text of a JSONL probe set, with its target span and label when given",
    JSONL_PAIRS: "two examples of a JSONL probe set, same sense or not",
    TEXTS: "an unlabelled text, routed for corpus-wide statistics only",
}
ROUTING_DESCRIPTION = "a token of a routed text: top-k experts and gate weights for every MoE layer"

COLUMN_DOCS = {
    "example_id": "id of the example (`senses`)",
    "lemma": "WordNet lemma (`_` joins multiword lemmas)",
    "pos": "part of speech: n, v, a (satellites included), r",
    "synset": "WordNet synset name, e.g. `bank.n.01`",
    "sense_key": "WordNet sense key of the lemma in this synset",
    "sense_number": "rank of the synset among the lemma's synsets (1 = most frequent in WordNet)",
    "lemma_n_senses": "number of synsets of the lemma in this part of speech",
    "lexname": "WordNet lexicographer file, e.g. `noun.artifact`",
    "gloss": "definition of the synset",
    "text": "the sentence (or formatted trace) that was routed",
    "target_start": "character offset of the target word (inclusive)",
    "target_end": "character offset of the target word (exclusive)",
    "target_form": "the target as it appears in the text",
    "source": "where the row comes from (e.g. `wordnet-3.0:example`)",
    "pair_id": "id of the pair",
    "example_a": "`senses.example_id` of the first example",
    "example_b": "`senses.example_id` of the second example",
    "synset_a": "synset of `example_a`",
    "synset_b": "synset of `example_b`",
    "same_sense": "whether both examples use the lemma in the same synset",
    "substitution_id": "id of the substituted sentence",
    "relation": "`synonym` (same synset) or `other-sense` (a lemma of another synset of the word)",
    "substitute": "the lemma put in place of the target",
    "substitute_synset": "synset the substitute was taken from",
    "trace_id": "id of the trace",
    "model_slug": "slug of the model; its routing is in `routing-<model_slug>`",
    "template": "`chat` (the model's chat template) or `plain`",
    "segments": "segment spans (prompt, think, answer) in `text`",
    "meta": "JSON metadata given with the trace",
    "model_id": "hub id, built-in name or local path of the model",
    "revision": "hub revision of the checkpoint, when known",
    "checkpoint_sha256": "sha256 over the checkpoint's config and weight files, when local",
    "architecture": "transformers architecture class",
    "model_type": "transformers model type",
    "router_adapter": "routing-atlas adapter that read the router",
    "num_hidden_layers": "decoder layers of the model",
    "moe_layers": "decoder layer index of each entry of `experts`/`weights`",
    "n_routed_experts": "routed experts per MoE layer (N)",
    "top_k": "experts chosen per token and layer (k)",
    "n_shared_experts": "always-on shared experts per MoE layer",
    "scoring_func": "router scoring: softmax or sigmoid",
    "topk_method": "expert selection: greedy, group-limited, or noaux_tc (bias-corrected, group-limited)",
    "n_group": "expert groups (group-limited routing)",
    "topk_group": "groups a token may use",
    "norm_topk_prob": "whether the top-k weights are renormalised to sum to 1 (before scaling)",
    "routed_scaling_factor": "factor applied to the routed weights",
    "total_params": "parameters of the model",
    "active_params": "parameters used per token (dense + shared + top-k routed)",
    "dtype": "compute dtype of the run",
    "engine": "engine that ran the model: hf (transformers) or vllm",
    "weights_dtype": "storage dtype of `weights`; null when the engine gives ids only",
    "tokenizer": "where the tokenizer was loaded from",
    "add_bos_token": "whether the tokenizer prepends its begin-of-sentence token",
    "random_init": "**true: random weights (random-init), routing carries no finding**",
    "seed": "seed of the random-init weights",
    "scores_top_m": "M of `atlas build --scores M` (score columns in the routing config); null: no scores stored",
    "source_id": "id of the routed text in `senses`, `substitutions` or `traces`",
    "corpus": "config that holds the routed text",
    "token_index": "position of the token in the text, 0..n-1",
    "token_id": "token id under the model's tokenizer",
    "token": "token string under the model's tokenizer",
    "char_start": "character offset where the token starts in the text (-1: special token)",
    "char_end": "character offset where the token ends (exclusive; -1: special token)",
    "is_target": "whether the token overlaps the target span",
    "segment": "trace segment of the token (prompt, think, answer); null outside traces",
    "marker": "reasoning marker the token belongs to; null if none",
    "experts": "[MoE layer][k] expert ids, highest gate weight first",
    "weights": "[MoE layer][k] gate weights the model multiplies the expert outputs by; null: ids-only engine",
    "label": "the corpus's own sense or group id of the target, when it gives one",
    "split": "the corpus's split (train, dev, test), when it has splits",
    "score": "share of the human labels that accept the substitute (SWORDS)",
    "n_labels": "number of human labels behind `score`",
    "text_id": "id of the text (`texts`)",
    "score_experts": "[MoE layer][M] (`--scores M`) the M experts of highest selection score (the score the "
    "router chooses on), highest first",
    "scores": "[MoE layer][M] (`--scores M`) those selection scores, float32: DeepSeek-V3/R1 and GLM-4 MoE "
    "sigmoid(logits) + e_score_correction_bias before the group mask; GPT-OSS the logits with the router "
    "bias; Llama 4 the raw logits; softmax routers the probability (see the model notes)",
}

SIZE_CATEGORIES = (
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
)

# Hub ids are `owner/name`; local paths start with /, ., ~ or a drive letter.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class CardContext:
    """Where the card says the atlas lives, and which release it is (all optional)."""

    repo_ref: str | None = None  # what load snippets name: a hub id or a local path
    revision: str | None = None  # a hub revision / git tag, e.g. v0.2.0
    version: str | None = None  # release version, e.g. 0.2.0
    released: str | None = None  # release date, YYYY-MM-DD
    hub_id: str | None = None  # set when the release lives on the Hub
    extra: dict[str, Any] = field(default_factory=dict)


# ---- reading the atlas ------------------------------------------------------------------------------------


def models_rows(root: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """The `models` rows, sorted by slug, with `n_moe_layers` added."""
    rows: list[dict[str, Any]] = []
    for rel in manifest.config_files(MODELS):
        rows.extend(pq.read_table(Path(root) / rel).to_pylist())
    for row in rows:
        row["n_moe_layers"] = len(row["moe_layers"] or [])
    return sorted(rows, key=lambda r: r["model_slug"])


def config_schemas(root: Path, manifest: Manifest) -> dict[str, Any]:
    """Config -> Arrow schema of its first data file (every file of a config has the declared schema)."""
    out = {}
    for config in manifest.configs():
        files = manifest.config_files(config)
        if files:
            out[config] = pq.read_schema(Path(root) / files[0])
    return out


def is_hub_id(model_id: str) -> bool:
    return bool(_HUB_ID_RE.match(model_id or "")) and not Path(model_id).is_absolute()


def is_synthetic(row: dict[str, Any]) -> bool:
    return row.get("model_id") == "synthetic" or row.get("model_type") == "synthetic"


def model_license(row: dict[str, Any], recorded: str | None = None) -> str:
    """What licence governs a model's routing rows (stated, never guessed; offline, so from the row only)."""
    model_id = row["model_id"]
    if is_synthetic(row):
        return f"synthetic data generated by routing-atlas ({CODE_LICENSE} code); no model weights involved"
    if recorded:
        return f"{recorded} (as recorded at build time from the model's card/config of `{model_id}`)"
    hub = is_hub_id(model_id)
    if row.get("random_init"):
        seed = row.get("seed")
        text = (
            f"{RANDOM_INIT} weights generated by routing-atlas ({CODE_LICENSE} code)"
            + (f", seed {seed}" if seed is not None else "")
            + "; no trained weights are involved"
        )
        if hub:
            text += f"; its config/tokenizer come from `{model_id}`: see the model's card, https://huggingface.co/{model_id}"
        return text
    if hub:
        return f"see the model's card: https://huggingface.co/{model_id} (licence not recorded in the atlas)"
    return f"local checkpoint `{model_id}`: licence not recorded in the atlas; see where the checkpoint came from"


def recorded_licenses(manifest: Manifest) -> dict[str, str]:
    """slug -> licence, when a build recorded one (`builds[].model_license`)."""
    return {
        b["model_slug"]: b["model_license"]
        for b in manifest.builds
        if b.get("model_slug") and b.get("model_license")
    }


def custom_corpora(manifest: Manifest) -> list[dict[str, Any]]:
    """The user's corpora (`atlas build --corpus wic|swords|jsonl|text`) as the build recorded them: configs,
    input files and hashes, source, licence, counts and how the rows were made."""
    held = manifest.corpus_counts.get("corpora") or {}
    return [{"kind": kind, **entry} for kind, entry in sorted(held.items())]


def routed_corpora(builds: list[dict[str, Any]]) -> list[str]:
    """The corpora (`--corpus` kinds) one model's build records routed, in build order."""
    kinds: list[str] = []
    for build in builds:
        if build.get("replaced_routing"):
            kinds = []  # `--replace-routing`: the routing of the earlier corpora was dropped
        corpus = build.get("corpus")
        kind = corpus.get("corpus") if isinstance(corpus, dict) else None
        if isinstance(kind, str) and kind not in kinds:
            kinds.append(kind)
    return kinds


def corpus_sources(root: Path, manifest: Manifest) -> list[str]:
    """Distinct `source` values of the corpus configs (e.g. `wordnet-3.0:example`): what the texts are."""
    values: set[str] = set()
    for config in (SENSES, SUBSTITUTIONS):
        for rel in manifest.config_files(config):
            column = pq.read_table(Path(root) / rel, columns=["source"]).column("source")
            values.update(v for v in column.unique().to_pylist() if v)
    return sorted(values)


def wordnet_version(sources: list[str]) -> str | None:
    for source in sources:
        match = re.match(r"wordnet-([0-9.]+)", source)
        if match:
            return match.group(1)
    return None


def size_category(n_rows: int) -> str:
    """The Hub's size bucket for a number of rows (of the largest config: a routing config's tokens)."""
    for limit, name in SIZE_CATEGORIES:
        if n_rows < limit:
            return name
    return "n>1T"


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
        line = (
            f"Routing audited on {audit['tokens']} tokens ({audit['texts']} texts, seed {audit['seed']}) against "
            f"`{audit['model']}` with the hf engine: {share:.2f}% identical expert sets "
            f"({audit['identical_sets']} of {audit['token_layers']} token-layers; 95% upper bound on the "
            f"mismatch rate {100.0 * audit['mismatch_upper']:.2f}%), "
            + ("passed" if audit.get("passed") else "**FAILED**")
            + f" (threshold {100.0 * audit['threshold']:.2f}%)."
        )
    except (KeyError, TypeError, ZeroDivisionError):
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


# ---- card metadata ----------------------------------------------------------------------------------------


def dataset_infos(root: Path, manifest: Manifest, schemas: dict[str, Any]):
    """`datasets.DatasetInfosDict`: the features (from the Parquet schemas) and split sizes of every config.

    `load_dataset` reads these from the card and checks the split sizes against the files it reads.
    """
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    infos = {}
    for config, info in manifest.configs().items():
        if config not in schemas:
            continue
        # Uncompressed column-chunk sizes: the closest footer figure to the in-memory (Arrow) size.
        num_bytes = 0
        for rel in info["files"]:
            meta = pq.ParquetFile(Path(root) / rel).metadata
            num_bytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=num_bytes, num_examples=info["rows"]))
        infos[config] = DatasetInfo(
            features=Features.from_arrow_schema(schemas[config]),
            splits=splits,
            download_size=info["bytes"],
            dataset_size=num_bytes,
            config_name=config,
        )
    return DatasetInfosDict(infos)


def card_data(
    root: Path, manifest: Manifest, models: list[dict[str, Any]], schemas: dict[str, Any]
) -> DatasetCardData:
    """The card's YAML metadata: licence, language, tasks, size, tags, `configs:` and `dataset_info`."""
    layout = AtlasLayout(root)
    configs = manifest.configs()
    largest = max((c["rows"] for c in configs.values()), default=0)
    tags = ["mixture-of-experts", "moe", "routing", "interpretability", "wordnet", "word-sense"]
    if any(m["random_init"] for m in models):
        tags.append(RANDOM_INIT)
    if any(is_synthetic(m) for m in models) or manifest.corpus_counts.get("synthetic"):
        tags.append("synthetic")
    data = DatasetCardData(
        language=["en"],
        license="other",
        license_name="wordnet-3.0-and-model-licenses",
        license_link=LICENSE_FILE,
        annotations_creators=["expert-generated", "machine-generated"],
        language_creators=["expert-generated"],
        multilinguality=["monolingual"],
        pretty_name=PRETTY_NAME,
        size_categories=[size_category(largest)],
        task_categories=["text-classification", "token-classification"],
        tags=tags,
        configs=[
            {"config_name": name, "data_files": [{"split": "train", "path": layout.data_glob(name)}]}
            for name in configs
        ],
    )
    dataset_infos(root, manifest, schemas).to_dataset_card_data(data)
    return data


# ---- the card ---------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATE.parent), str(TEMPLATES_DIR)]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # markdown, not HTML  # noqa: S701
    )
    env.filters["fmt"] = _format_value
    env.filters["pyrepr"] = lambda value: pprint.pformat(value, width=100, sort_dicts=False)
    return env


def render_template(name: str, **context: Any) -> str:
    """Render a template of this package (`template.md` or `templates/<name>`)."""
    return _environment().get_template(name).render(**context)


@dataclass
class AtlasView:
    """What the card reads from an atlas directory, loaded once."""

    root: Path
    manifest: Manifest
    models: list[dict[str, Any]]
    schemas: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> AtlasView:
        root = Path(root)
        manifest = Manifest.load(root)
        return cls(root, manifest, models_rows(root, manifest), config_schemas(root, manifest))


def card_context(view: AtlasView, context: CardContext | None = None) -> dict[str, Any]:
    """Everything the templates need, read from the atlas."""
    root, manifest, models, schemas = view.root, view.manifest, view.models, view.schemas
    context = context or CardContext()
    licenses = recorded_licenses(manifest)
    random_slugs = {m["model_slug"] for m in models if m["random_init"]}
    synthetic = any(is_synthetic(m) for m in models) or bool(manifest.corpus_counts.get("synthetic"))

    def label(config: str) -> str:
        """A config name, marked wherever it holds a random-init model's routing."""
        slug = config[len(ROUTING_PREFIX) :] if config.startswith(ROUTING_PREFIX) else None
        return f"`{config}` ({RANDOM_INIT} model)" if slug in random_slugs else f"`{config}`"

    configs = []
    for name, info in manifest.configs().items():
        routing = name.startswith(ROUTING_PREFIX)
        description = ROUTING_DESCRIPTION if routing else CONFIG_DESCRIPTIONS.get(name, "")
        slug = name[len(ROUTING_PREFIX) :] if routing else None
        if slug in random_slugs:
            description += f"; **{RANDOM_INIT} model: a null model, not a finding**"
        configs.append(
            {
                "name": name,
                "label": label(name),
                "rows": info["rows"],
                "files": len(info["files"]),
                "bytes": info["bytes"],
                "description": description,
                "var": name.replace("-", "_").replace(".", "_"),
                "random_init": slug in random_slugs,
            }
        )
    schema_tables = [
        {
            "name": name,
            "label": label(name),
            "columns": [
                {
                    "name": f.name,
                    "type": str(f.type),
                    "nullable": f.nullable,
                    "meaning": COLUMN_DOCS.get(f.name, ""),
                }
                for f in schema
            ],
        }
        for name, schema in schemas.items()
    ]
    for model in models:
        model["label"] = f"`{model['model_slug']}`" + (f" ({RANDOM_INIT})" if model["random_init"] else "")
        model["license"] = model_license(model, licenses.get(model["model_slug"]))
        model["hub"] = is_hub_id(model["model_id"]) and not is_synthetic(model)
        model["builds"] = [b for b in manifest.builds if b.get("model_slug") == model["model_slug"]]
        # What the build recorded about the model (e.g. what was verified of a built-in tokenizer).
        model["notes"] = list(dict.fromkeys(n for b in model["builds"] for n in b.get("model_notes") or []))
        model["notes"] += audit_lines(manifest, model["model_slug"], model["random_init"])
        model["corpora"] = routed_corpora(model["builds"])
    corpora_differ = len({tuple(sorted(m["corpora"])) for m in models}) > 1
    builds = []
    for build in manifest.builds:
        summary = build.get("summary") or build.get("kind", "")
        slug = build.get("model_slug")
        builds.append(
            {
                "summary": summary,
                "random_init": slug in random_slugs and RANDOM_INIT not in summary,
                "code_version": build.get("code_version"),
                "stats": build.get("stats"),
                "provenance": engine_provenance((build.get("engine") or {}).get("provenance")),
            }
        )
    counts = {
        k: v
        for k, v in manifest.corpus_counts.items()
        if k not in ("options", "notes", "source", "wordnet", "corpora")
    }
    sources = corpus_sources(root, manifest)
    validation = read_validation(root)
    metrics = read_metrics(root)
    metrics_block = None
    if metrics is not None and "unreadable" in metrics:
        metrics_block = {
            "summary": "",
            "problems": [f"{METRICS_DIR}/{METRICS_JSON} is unreadable ({metrics['unreadable']})"],
            "report": False,
            "options": {},
        }
    elif metrics is not None:
        problems = metrics_mismatch(metrics, manifest)
        metrics_path = root / METRICS_DIR / METRICS_JSON
        if not problems and metrics_path.stat().st_mtime < AtlasLayout(root).manifest_path.stat().st_mtime:
            problems = ["metrics.json is older than manifest.json"]
        metrics_block = {
            "summary": metrics_summary(metrics),
            "problems": problems,
            "report": (root / METRICS_DIR / METRICS_REPORT).exists(),
            "options": metrics.get("options") or {},
        }
    repo_ref = context.repo_ref or str(root.resolve())
    return {
        "pretty_name": PRETTY_NAME,
        "summary": SUMMARY,
        "version": context.version,
        "revision": context.revision,
        "released": context.released,
        "hub_id": context.hub_id,
        "repo_ref": repo_ref,
        "load_kwargs": f', revision="{context.revision}"' if context.revision and context.hub_id else "",
        "random_init_models": [m for m in models if m["random_init"]],
        "synthetic": synthetic,
        "configs": configs,
        "schemas": schema_tables,
        "models": models,
        "corpus_counts": counts,
        "corpus_options": manifest.corpus_counts.get("options") or {},
        "corpus_notes": list(manifest.corpus_counts.get("notes") or []),
        "custom_corpora": custom_corpora(manifest),
        "corpora_differ": corpora_differ,
        "wordnet_source": manifest.corpus_counts.get("source") or manifest.corpus_counts.get("wordnet"),
        "wordnet_version": wordnet_version(sources),
        "corpus_sources": sources,
        "code_version": manifest.code_version,
        "schema_version": manifest.schema_version,
        "builds": builds,
        "validation": validation,
        "validation_problems": [
            r for r in (validation or {}).get("results", []) if r.get("status") not in ("passed",)
        ],
        "label": label,
        "metrics": metrics_block,
        "paper_arxiv": PAPER_ARXIV,
        "wordnet_license_url": WORDNET_LICENSE_URL,
        "code_license": CODE_LICENSE,
        "license_file": LICENSE_FILE,
        "year": (context.released or datetime.now(timezone.utc).date().isoformat())[:4],
        "bibtex_key": "routing_atlas" + (f"_v{context.version.replace('.', '_')}" if context.version else ""),
        **context.extra,
    }


def render_card(root: Path, repo_ref: str | None = None, *, context: CardContext | None = None) -> str:
    """The card (YAML metadata + markdown) for the atlas at `root`.

    Args:
        root: the atlas directory.
        repo_ref: what the load snippets name (default: the directory's absolute path).
        context: release details (version, revision, hub id); `repo_ref` wins over `context.repo_ref`.

    Returns:
        The README.md text; `DatasetCard` has parsed it, so its YAML block is valid.
    """
    return _render(AtlasView.load(root), _context(repo_ref, context))[0]


def _context(repo_ref: str | None, context: CardContext | None) -> CardContext:
    context = context or CardContext()
    if repo_ref is not None:
        context.repo_ref = repo_ref
    return context


def _render(view: AtlasView, context: CardContext) -> tuple[str, str]:
    """(README.md, LICENSE.md) texts."""
    values = card_context(view, context)
    data = card_data(view.root, view.manifest, view.models, view.schemas)
    body = render_template(TEMPLATE.name, **values)
    recorded = {
        key: getattr(context, key) for key in ("repo_ref", "revision", "version", "released", "hub_id")
    }
    recorded["repo_ref"] = values["repo_ref"]
    body = body.rstrip("\n") + f"\n\n<!-- {CONTEXT_COMMENT} {json.dumps(recorded, sort_keys=True)} -->\n"
    # DatasetCard parses (and so checks) the YAML block that DatasetCardData wrote.
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}")
    return str(card), render_template("LICENSE.md.jinja", **values)


def recorded_context(card_text: str) -> CardContext | None:
    """The context a card was rendered with (its closing comment), or None for a card without one."""
    match = re.search(rf"<!-- {CONTEXT_COMMENT} (\{{.*\}}) -->", card_text)
    if not match:
        return None
    try:
        values = json.loads(match.group(1))
    except ValueError:
        return None
    if not isinstance(values, dict):
        return None
    return CardContext(
        **{k: values.get(k) for k in ("repo_ref", "revision", "version", "released", "hub_id")}
    )


def comparable(card_text: str) -> str:
    """A card without what may change after it was written: the Validation section, the year of an
    unreleased card's citation and the metrics' age note."""
    text = re.sub(rf"(?ms)^{VALIDATION_HEADING}\n.*?(?=^## )", "", card_text)
    text = re.sub(r"(?m)^> \*\*These metrics may not match this data:\*\*.*$", "", text)
    return re.sub(r"(?m)^(\s*year\s*=\s*)\{\d{4}\}", r"\1{YEAR}", text)


def rerender_card(root: Path) -> tuple[str, str] | None:
    """(shipped card, the card rendered again from the atlas with the shipped card's context), both through
    `comparable`; None when the atlas has no card or its card records no context."""
    path = AtlasLayout(root).card_path
    if not path.is_file():
        return None
    shipped = path.read_text(encoding="utf-8")
    context = recorded_context(shipped)
    if context is None:
        return None
    fresh = _render(AtlasView.load(root), context)[0]
    return comparable(shipped), comparable(fresh)


def write_card(root: Path, repo_ref: str | None = None, *, context: CardContext | None = None) -> Path:
    """Write `DIR/README.md` (the card) and `DIR/LICENSE.md` (what its `license_link` names).

    Returns:
        The card's path.
    """
    layout = AtlasLayout(root)
    refuse_published_release(root, "rewriting its card")
    card, license_text = _render(AtlasView.load(root), _context(repo_ref, context))
    write_text_atomic(Path(root) / LICENSE_FILE, license_text)
    write_text_atomic(layout.card_path, card)
    return layout.card_path
