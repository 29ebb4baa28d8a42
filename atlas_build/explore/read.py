"""What the explorer shows, read from the atlas alone: its manifest, Parquet configs and metrics.json.

Only `atlas_build.atlas` (the schema and manifest) and pyarrow are used: the explorer never imports an
engine, corpus, model or router, so the site describes exactly what the dataset holds.

Shapes::

    AtlasContent.lemmas[i]          one (lemma, pos): senses -> examples, pairs between examples
    AtlasContent.routing[slug]      TargetRouting of the senses' target tokens, grouped by lemma
    AtlasContent.sentences[slug]    TargetRouting of every token of the senses' examples (ids, no weights)
    TargetRouting.experts           int   [rows, moe_layers, top_k]  (rows = target sub-tokens)
    TargetRouting.weights           float16 [rows, moe_layers, top_k] or None (ids-only engines)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_array
from atlas_build.atlas.rows import RowsMismatchError, read_verified
from atlas_build.atlas.schema import (
    CUSTOM_TEXT_CONFIGS,
    INTERVENTIONS,
    MODELS,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TRACES,
    routing_config_name,
)
from atlas_build.errors import AtlasError

METRICS_JSON = "metrics/metrics.json"
TARGET_COLUMNS = ["source_id", "token_index", "token", "char_start", "char_end", "experts", "weights"]
# The sentence view: every token of the senses' examples, expert ids only (weights would double its size).
SENTENCE_COLUMNS = TARGET_COLUMNS[:-1]
TRACE_COLUMNS = [
    "source_id",
    "token_index",
    "token",
    "char_start",
    "char_end",
    "segment",
    "marker",
    "experts",
]


# What the model page shows of each `interventions` row.
INTERVENTION_COLUMNS = (
    "model_slug",
    "plan_name",
    "plan_sha256",
    "hypothesis_id",
    "claim",
    "layer",
    "experts",
    "intervention",
    "ablation",
    "outcome",
    "primary",
    "n_texts",
    "cluster_unit",
    "effect",
    "ci_low",
    "ci_high",
    "baseline_mean",
    "baseline_draws",
    "p_value",
    "alpha",
    "survives",
    "hypothesis_survives",
)


class ExploreError(AtlasError):
    """The atlas (or its metrics) cannot be shown; the message says why and what to do."""


@dataclass
class Example:
    example_id: str
    text: str
    target_start: int
    target_end: int


@dataclass
class Sense:
    synset: str
    sense_key: str
    sense_number: int
    lexname: str
    gloss: str
    examples: list[Example] = field(default_factory=list)


@dataclass
class Lemma:
    lemma: str
    pos: str
    n_wordnet_senses: int  # synsets of the lemma in this pos, with or without a usable example
    senses: list[Sense] = field(default_factory=list)
    # (example index a, example index b, same sense), indices into `examples()` order.
    pairs: list[tuple[int, int, bool]] = field(default_factory=list)
    # `substitutions` rows of this lemma's examples: id, example (index), relation, substitute, text, target.
    substitutions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.lemma}.{self.pos}"

    def examples(self) -> list[Example]:
        return [example for sense in self.senses for example in sense.examples]


@dataclass
class TargetRouting:
    """One model's routing of every target sub-token of the senses corpus, rows ordered by lemma.

    `lemma_bounds[i]:lemma_bounds[i + 1]` are lemma i's rows; `example` is the example index within its
    lemma (`Lemma.examples()` order), `token_index` the sub-token's position in the text.
    """

    example: np.ndarray  # int [rows]
    token_index: np.ndarray  # int [rows]
    tokens: list[str]
    char_spans: np.ndarray  # int [rows, 2]
    experts: np.ndarray  # int [rows, moe_layers, top_k], highest weight first
    weights: np.ndarray | None  # float16 [rows, moe_layers, top_k]
    lemma_bounds: np.ndarray  # int [lemmas + 1]

    def lemma_slice(self, i: int) -> slice:
        return slice(int(self.lemma_bounds[i]), int(self.lemma_bounds[i + 1]))


@dataclass
class AtlasContent:
    root: Path
    manifest: Manifest
    lemmas: list[Lemma]
    models: list[dict[str, Any]]  # `models` rows, in config order
    routing: dict[str, TargetRouting]
    metrics: dict[str, Any] | None
    metrics_dir: Path | None
    # `atlas intervene` rows (the `interventions` config), per model slug: what the model page lists.
    interventions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Every token of the senses' examples, per model slug (the sentence view); weights are None.
    sentences: dict[str, TargetRouting] = field(default_factory=dict)
    # The `traces` config's rows (trace_id, model_slug, text, template, segments, source), in config order,
    # and per model slug each trace's token rows: trace id -> TraceTokens.
    traces: list[dict[str, Any]] = field(default_factory=list)
    trace_routing: dict[str, dict[str, TraceTokens]] = field(default_factory=dict)
    # Per model every token of the lemmas' substitutions (`Lemma.substitutions`): a TargetRouting whose
    # `example` is the substitution's index within its lemma.
    substitution_routing: dict[str, TargetRouting] = field(default_factory=dict)


@dataclass
class TraceTokens:
    """Every token of one trace routed by one model, in token order (expert ids only)."""

    token_index: np.ndarray  # int [tokens]
    tokens: list[str]
    char_spans: np.ndarray  # int [tokens, 2]
    segment: list[str | None]
    marker: list[str | None]
    experts: np.ndarray  # int [tokens, moe_layers, top_k]


def read_config(root: Path, manifest: Manifest, config: str, columns=None, filter=None) -> pa.Table | None:
    """The config's rows from the files its manifest lists (None when the atlas has no such config)."""
    try:
        # Parsed from the very bytes checked against the manifest (`atlas.rows`): the site shows these files.
        return read_verified(root, manifest.files, config, columns=columns, filter=filter)
    except RowsMismatchError as error:
        raise ExploreError(str(error)) from error
    except (OSError, pa.ArrowInvalid) as error:
        raise ExploreError(
            f"cannot read the {config} config of {root} ({error}); run `atlas verify {root}`"
        ) from error


def read_atlas(root: Path, metrics_path: Path | None = None) -> AtlasContent:
    """Everything the site shows. `metrics_path` defaults to `root/metrics/metrics.json` when present."""
    root = Path(root)
    manifest = Manifest.load(root)
    senses = read_config(root, manifest, SENSES)
    if senses is None or senses.num_rows == 0:
        raise ExploreError(
            f"{root} has no senses config: the explorer shows WordNet senses; build one with "
            f"`atlas build --model MODEL --out {root}` (corpus wordnet)"
        )
    lemmas, example_ids = _lemmas(senses)
    pairs = read_config(root, manifest, SENSE_PAIRS)
    if pairs is not None:
        _attach_pairs(lemmas, pairs)
    models_table = read_config(root, manifest, MODELS)
    models = models_table.to_pylist() if models_table is not None else []
    routing, sentences = {}, {}
    for row in models:
        config = routing_config_name(row["model_slug"])
        if manifest.config_files(config):
            routing[row["model_slug"]] = _target_routing(root, manifest, config, example_ids, lemmas)
            sentences[row["model_slug"]] = _target_routing(
                root, manifest, config, example_ids, lemmas, all_tokens=True
            )
    metrics, metrics_dir = _metrics(root, metrics_path)
    interventions: dict[str, list[dict[str, Any]]] = {}
    table = read_config(root, manifest, INTERVENTIONS, columns=list(INTERVENTION_COLUMNS))
    for row in table.to_pylist() if table is not None else []:
        interventions.setdefault(row["model_slug"], []).append(row)
    substitution_ids = _attach_substitutions(root, manifest, lemmas)
    substitution_routing = {}
    if substitution_ids:
        for row in models:
            config = routing_config_name(row["model_slug"])
            if manifest.config_files(config):
                substitution_routing[row["model_slug"]] = _target_routing(
                    root, manifest, config, substitution_ids, lemmas, all_tokens=True, corpus=SUBSTITUTIONS
                )
    trace_columns = ["trace_id", "model_slug", "text", "template", "segments", "source"]
    traces_table = read_config(root, manifest, TRACES, columns=trace_columns)
    traces = traces_table.to_pylist() if traces_table is not None else []
    trace_routing = {}
    if traces:
        for row in models:
            config = routing_config_name(row["model_slug"])
            if manifest.config_files(config):
                trace_routing[row["model_slug"]] = _trace_routing(root, manifest, config)
    traces.extend(_user_texts(root, manifest, models, trace_routing))
    return AtlasContent(
        root,
        manifest,
        lemmas,
        models,
        routing,
        metrics,
        metrics_dir,
        interventions,
        sentences,
        traces,
        trace_routing,
        substitution_routing,
    )


def _attach_substitutions(root: Path, manifest: Manifest, lemmas: list[Lemma]) -> dict[str, tuple[int, int]]:
    """Put each `substitutions` row on its base example's lemma; substitution_id -> (lemma, its index)."""
    columns = [
        "substitution_id",
        "example_id",
        "relation",
        "substitute",
        "text",
        "target_start",
        "target_end",
    ]
    table = read_config(root, manifest, SUBSTITUTIONS, columns=columns)
    if table is None or table.num_rows == 0:
        return {}
    where = {}
    for li, lemma in enumerate(lemmas):
        for ei, example in enumerate(lemma.examples()):
            where[example.example_id] = (li, ei)
    ids = {}
    for row in table.to_pylist():
        if row["example_id"] not in where:
            continue
        li, ei = where[row["example_id"]]
        ids[row["substitution_id"]] = (li, len(lemmas[li].substitutions))
        lemmas[li].substitutions.append(
            {
                "id": row["substitution_id"],
                "example": ei,
                "relation": row["relation"],
                "substitute": row["substitute"],
                "text": row["text"],
                "target": [int(row["target_start"]), int(row["target_end"])],
            }
        )
    return ids


def _user_texts(root: Path, manifest: Manifest, models: list[dict], trace_routing: dict) -> list[dict]:
    """The user corpora's routed texts as trace-like rows (their target, when given, as a "target" segment).

    Each has `routing_key` "<config>/<id>" (ids of two configs may coincide); their token rows are added to
    `trace_routing[slug]` under that key.
    """
    out = []
    for config in CUSTOM_TEXT_CONFIGS:
        if not manifest.config_files(config):
            continue
        table = read_config(root, manifest, config)
        names = table.schema.names
        id_column = next((c for c in ("substitution_id", "example_id", "text_id") if c in names), None)
        if id_column is None or "text" not in names:
            continue
        for row in table.to_pylist():
            start, end = row.get("target_start"), row.get("target_end")
            out.append(
                {
                    "trace_id": row[id_column],
                    "model_slug": None,
                    "text": row["text"],
                    "template": config,
                    "segments": []
                    if start is None or end is None
                    else [{"name": "target", "start": start, "end": end}],
                    "source": row.get("source") or config,
                    "routing_key": f"{config}/{row[id_column]}",
                }
            )
        for row in models:
            routing = routing_config_name(row["model_slug"])
            if manifest.config_files(routing):
                found = _trace_routing(root, manifest, routing, corpus=config)
                trace_routing.setdefault(row["model_slug"], {}).update(
                    {f"{config}/{k}": v for k, v in found.items()}
                )
    return out


def _trace_routing(
    root: Path, manifest: Manifest, config: str, corpus: str = TRACES
) -> dict[str, TraceTokens]:
    """source id -> its tokens' rows in this routing config (a filtered scan of one corpus, traces by default)."""
    table = read_config(root, manifest, config, columns=TRACE_COLUMNS, filter=pc.field("corpus") == corpus)
    if table is None or table.num_rows == 0:
        return {}
    ids = np.asarray(table.column("source_id").to_pylist(), dtype=object)
    token_index = table.column("token_index").to_numpy()
    order = np.lexsort((token_index, ids.astype(str)))
    experts = routing_array(table.column("experts"))[order]
    tokens = table.column("token").to_pylist()
    spans = np.stack([table.column("char_start").to_numpy(), table.column("char_end").to_numpy()], axis=1)
    segment, marker = table.column("segment").to_pylist(), table.column("marker").to_pylist()
    out: dict[str, TraceTokens] = {}
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        rows = order[a:b]
        out[str(sorted_ids[a])] = TraceTokens(
            token_index=token_index[rows],
            tokens=[tokens[i] for i in rows],
            char_spans=spans[rows],
            segment=[segment[i] for i in rows],
            marker=[marker[i] for i in rows],
            experts=experts[a:b],
        )
    return out


def _lemmas(senses: pa.Table) -> tuple[list[Lemma], dict[str, tuple[int, int]]]:
    """Lemmas sorted by (lemma, pos), senses by WordNet rank; example_id -> (lemma index, example index)."""
    # Arrow's sort is stable: examples keep the corpus's order within a sense.
    order = pc.sort_indices(
        senses, sort_keys=[("lemma", "ascending"), ("pos", "ascending"), ("sense_number", "ascending")]
    )
    rows = senses.take(order).to_pylist()
    lemmas: list[Lemma] = []
    example_ids: dict[str, tuple[int, int]] = {}
    for row in rows:
        if not lemmas or (lemmas[-1].lemma, lemmas[-1].pos) != (row["lemma"], row["pos"]):
            lemmas.append(Lemma(row["lemma"], row["pos"], int(row["lemma_n_senses"])))
        lemma = lemmas[-1]
        if not lemma.senses or lemma.senses[-1].synset != row["synset"]:
            lemma.senses.append(
                Sense(row["synset"], row["sense_key"], int(row["sense_number"]), row["lexname"], row["gloss"])
            )
        example_ids[row["example_id"]] = (len(lemmas) - 1, sum(len(s.examples) for s in lemma.senses))
        lemma.senses[-1].examples.append(
            Example(row["example_id"], row["text"], int(row["target_start"]), int(row["target_end"]))
        )
    return lemmas, example_ids


def _attach_pairs(lemmas: list[Lemma], pairs: pa.Table) -> None:
    index = {}
    for li, lemma in enumerate(lemmas):
        for ei, example in enumerate(lemma.examples()):
            index[example.example_id] = (li, ei)
    for a, b, same in zip(
        pairs.column("example_a").to_pylist(),
        pairs.column("example_b").to_pylist(),
        pairs.column("same_sense").to_pylist(),
        strict=True,
    ):
        if a in index and b in index and index[a][0] == index[b][0]:
            lemmas[index[a][0]].pairs.append((index[a][1], index[b][1], bool(same)))


def _target_routing(
    root: Path,
    manifest: Manifest,
    config: str,
    example_ids: dict[str, tuple[int, int]],
    lemmas: list[Lemma],
    all_tokens: bool = False,
    corpus: str = SENSES,
) -> TargetRouting:
    """The routing rows of the senses' target tokens (a filtered scan, never the whole config).

    `all_tokens`: every token of the senses' examples instead, without weights (the sentence view).
    """
    wanted = pc.field("corpus") == corpus
    if not all_tokens:
        wanted = wanted & pc.field("is_target")
    table = read_config(
        root, manifest, config, columns=SENTENCE_COLUMNS if all_tokens else TARGET_COLUMNS, filter=wanted
    )
    ids = table.column("source_id").to_pylist()
    located = [example_ids.get(source_id) for source_id in ids]
    keep = np.array([loc is not None for loc in located], dtype=bool)
    lemma_of = np.array([loc[0] if loc else -1 for loc in located], dtype=np.int64)
    example_of = np.array([loc[1] if loc else -1 for loc in located], dtype=np.int64)
    token_index = table.column("token_index").to_numpy()
    order = np.lexsort((token_index, example_of, lemma_of))
    order = order[keep[order]]
    experts = routing_array(table.column("experts"))[order] if table.num_rows else np.zeros((0, 0, 0))
    weights = None
    weights_column = None if all_tokens else table.column("weights")
    if weights_column is not None and table.num_rows and weights_column.null_count < table.num_rows:
        weights = routing_array(weights_column, dtype=np.float32)[order].astype(np.float16)
    tokens = table.column("token").to_pylist()
    spans = np.stack([table.column("char_start").to_numpy(), table.column("char_end").to_numpy()], axis=1)
    bounds = np.searchsorted(lemma_of[order], np.arange(len(lemmas) + 1), side="left")
    return TargetRouting(
        example=example_of[order],
        token_index=token_index[order],
        tokens=[tokens[i] for i in order],
        char_spans=spans[order] if len(order) else np.zeros((0, 2), dtype=np.int64),
        experts=experts,
        weights=weights,
        lemma_bounds=bounds,
    )


def _metrics(root: Path, metrics_path: Path | None) -> tuple[dict | None, Path | None]:
    path = Path(metrics_path) if metrics_path is not None else root / METRICS_JSON
    if not path.exists():
        if metrics_path is not None:
            raise ExploreError(f"{path} does not exist: write it with `atlas metrics {root} --out DIR`")
        return None, None
    try:
        # metrics.json writes NaN as null; a hand-edited one may hold NaN, which the page must not see.
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda _: None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExploreError(
            f"{path} is not readable JSON ({error}); rerun `atlas metrics {root} --out {path.parent}`"
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ExploreError(
            f"{path} is not an `atlas metrics` report (no models object); rerun `atlas metrics {root} --out "
            f"{path.parent}`"
        )
    _refuse_foreign(root, path, data)
    return _finite(data), path.parent


def _refuse_foreign(root: Path, path: Path, data: dict) -> None:
    """Metrics of another atlas, or of other data, are refused: the page would show them as this atlas's.

    They fit when `provenance.manifest_sha256` is this atlas's manifest.json, or (a manifest changed since
    only in what it records, e.g. an `atlas audit`) every data file they list has this manifest's sha256.
    """
    again = f"rerun `atlas metrics {root} --out {root / 'metrics'}`"
    if data.get("format") != "routing-atlas-metrics":
        raise ExploreError(
            f"{path} is not an `atlas metrics` report (format {data.get('format')!r}); {again}"
        )
    provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    if provenance.get("manifest_sha256") == hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest():
        return
    listed = provenance.get("data_files")
    files = Manifest.load(root).data_hashes()
    if isinstance(listed, dict) and listed and all(files.get(rel) == sha for rel, sha in listed.items()):
        return
    raise ExploreError(
        f"{path} holds the metrics of another atlas or of other data (its manifest sha256 and data files are "
        f"not {root}'s): {again}, or pass --metrics of this atlas"
    )


def _finite(value):
    """JSON for a browser: NaN/inf -> null (json.dumps would write the invalid token NaN)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
