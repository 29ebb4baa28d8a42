"""Render `DIR/README.md` (the dataset card) and `DIR/LICENSE.md` from the atlas itself.

The entry: the template context and the card's release variants. Its parts live by role beside it:
`vocabulary.py` (names, config and column descriptions), `reading.py` (what the card reads from the atlas),
`metadata.py` (the YAML block: configs and the default one, tasks, sources, features), `sections.py` (the
sections that report findings and checks, one function each, listed in `SECTIONS`). Every name they define
is importable from here as before.

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
from huggingface_hub import DatasetCard

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.manifest import Manifest, refuse_published_release
from atlas_build.atlas.schema import ROUTING_PREFIX, SENSE_PAIRS, SENSES, SUBSTITUTIONS
from atlas_build.atlas.writer import write_text_atomic

# The card's parts, re-exported: what other rooms and tests import from here keeps working.
from dataset_cards.interventions import intervention_lines
from dataset_cards.metadata import card_data, dataset_infos, default_config, size_category, source_datasets
from dataset_cards.reading import (
    code_repository,
    config_schemas,
    corpus_sources,
    custom_corpora,
    custom_corpora_kinds,
    is_hub_id,
    is_synthetic,
    model_license,
    models_rows,
    recorded_licenses,
    routed_corpora,
    wordnet_version,
)
from dataset_cards.sections import (
    audit_lines,
    engine_provenance,
    metrics_context,
    metrics_mismatch,
    metrics_summary,
    read_metrics,
    read_validation,
    validation_context,
)
from dataset_cards.vocabulary import (
    CODE_LICENSE,
    COLUMN_DOCS,
    CONFIG_DESCRIPTIONS,
    LICENSE_FILE,
    LOCAL_REPO_REF,
    METRICS_DIR,
    METRICS_JSON,
    METRICS_REPORT,
    PAPER_ARXIV,
    PRETTY_NAME,
    RANDOM_INIT,
    ROUTING_DESCRIPTION,
    SUMMARY,
    VALIDATION_JSON,
    WORDNET_LICENSE_URL,
)

__all__ = [
    "CODE_LICENSE",
    "COLUMN_DOCS",
    "CONFIG_DESCRIPTIONS",
    "LICENSE_FILE",
    "METRICS_DIR",
    "METRICS_JSON",
    "METRICS_REPORT",
    "VALIDATION_JSON",
    "AtlasView",
    "CardContext",
    "audit_lines",
    "card_context",
    "card_data",
    "code_repository",
    "comparable",
    "config_schemas",
    "corpus_sources",
    "custom_corpora",
    "custom_corpora_kinds",
    "dataset_infos",
    "default_config",
    "engine_provenance",
    "is_hub_id",
    "is_synthetic",
    "metrics_mismatch",
    "metrics_summary",
    "model_license",
    "models_rows",
    "read_metrics",
    "read_validation",
    "recorded_context",
    "recorded_licenses",
    "render_card",
    "render_template",
    "rerender_card",
    "size_category",
    "source_datasets",
    "wordnet_version",
    "write_card",
]

TEMPLATE = Path(__file__).with_name("template.md")
TEMPLATES_DIR = Path(__file__).with_name("templates")

# The sections that report findings and checks, one function each (sections.py): (root, manifest) -> the
# template values it adds. A new section: its function there, its name here, its part of template.md.
SECTIONS = (validation_context, metrics_context)
# The card ends with the context it was rendered with, so `atlas validate` can render it again and compare.
CONTEXT_COMMENT = "routing-atlas-card-context"
# What may differ between the card and a fresh rendering of it: the date and the validation results (the
# report is written after the card, by `atlas validate`).
VALIDATION_HEADING = "## Validation"


@dataclass
class CardContext:
    """Where the card says the atlas lives, and which release it is (all optional)."""

    repo_ref: str | None = None  # what load snippets name: a hub id or a local path
    revision: str | None = None  # a hub revision / git tag, e.g. v0.2.0
    version: str | None = None  # release version, e.g. 0.2.0
    released: str | None = None  # release date, YYYY-MM-DD
    hub_id: str | None = None  # set when the release lives on the Hub
    extra: dict[str, Any] = field(default_factory=dict)


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


def card_stats(stats: Any) -> Any:
    """A build record's stats as the card lists them: a resumed build's runs in one phrase."""
    if not isinstance(stats, dict):
        return stats
    shown = {
        k: v for k, v in stats.items() if k not in ("resumes", "runs", "started", "tokens_routed_last_run")
    }
    resumes = stats.get("resumes")
    if isinstance(resumes, list) and resumes:
        times = ", ".join(str(r.get("started")) for r in resumes if isinstance(r, dict))
        shown["runs"] = f"{stats.get('runs')} (tokens summed over all; resumed {times})"
    return shown


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
        model["notes"] += intervention_lines(root, manifest, model["model_slug"], model["random_init"])
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
                "stats": card_stats(build.get("stats")),
                "provenance": engine_provenance((build.get("engine") or {}).get("provenance")),
            }
        )
    counts = {
        k: v
        for k, v in manifest.corpus_counts.items()
        if k not in ("options", "notes", "source", "wordnet", "corpora")
    }
    sources = corpus_sources(root, manifest)
    # A local atlas's card names its own folder, relative ("."): the build machine's paths mean nothing elsewhere.
    repo_ref = context.repo_ref or LOCAL_REPO_REF
    values = {
        "pretty_name": PRETTY_NAME,
        "summary": SUMMARY,
        "version": context.version,
        "revision": context.revision,
        "released": context.released,
        "hub_id": context.hub_id,
        "repo_ref": repo_ref,
        "local": repo_ref == LOCAL_REPO_REF,
        "default_config": default_config([c["name"] for c in configs]),
        "wordnet_texts": any(c["name"] in (SENSES, SENSE_PAIRS, SUBSTITUTIONS) for c in configs),
        "repository": code_repository(),
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
        "label": label,
        "paper_arxiv": PAPER_ARXIV,
        "wordnet_license_url": WORDNET_LICENSE_URL,
        "code_license": CODE_LICENSE,
        "license_file": LICENSE_FILE,
        "year": (context.released or datetime.now(timezone.utc).date().isoformat())[:4],
        "bibtex_key": "routing_atlas" + (f"_v{context.version.replace('.', '_')}" if context.version else ""),
    }
    for section in SECTIONS:
        values.update(section(root, manifest))
    return {**values, **context.extra}


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
