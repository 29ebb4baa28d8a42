"""`run_validation(root)`: every check on every config of an atlas directory, into one report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.manifest import Manifest, ManifestError, code_version
from atlas_build.atlas.schema import (
    CUSTOM_TEXT_CONFIGS,
    MODELS,
    ROUTING_PREFIX,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TRACES,
    expert_id_type,
    schema_for,
)
from validation import claims, corpora, coverage, custom_corpora, tokens
from validation.corpora import SenseIndex, TextRegistry
from validation.gxrun import GXRunner
from validation.integrity import verify_files
from validation.interventions import CHECK as INTERVENTIONS_CHECK
from validation.interventions import CONFIG as INTERVENTIONS_CONFIG
from validation.interventions import check_interventions
from validation.ledger import Ledger
from validation.reading import AtlasFiles, discover, read_table
from validation.report import ValidationReport
from validation.router_inputs import CHECK as ROUTER_INPUTS_CHECK
from validation.router_inputs import check_router_inputs, stores_router_inputs
from validation.routing import CHECKS as ROUTING_CHECKS
from validation.routing import RoutingValidator
from validation.rules import BATCH_ROWS, MAX_EXAMPLES, MIN_TOKENS_FOR_DEGENERACY, WEIGHT_SUM_RTOL
from validation.scores import CHECK as SCORES_CHECK
from validation.scores import check_scores

ATLAS = "atlas"  # the config name of atlas-wide results
REPORT_NAME = "validation.json"

TEXT_CHECKS = {
    SENSES: ("ids-unique", "value-sets", "target-span"),
    SENSE_PAIRS: ("ids-unique", "value-sets", "references", "same-sense"),
    SUBSTITUTIONS: ("ids-unique", "value-sets", "references", "target-span"),
    TRACES: ("ids-unique", "value-sets", "segments"),
    MODELS: ("ids-unique", "models-fields"),
}


class AtlasNotFoundError(Exception):
    """The directory does not exist or is not a routing atlas (no readable manifest of this version)."""


def run_validation(
    root: Path,
    *,
    hashes: bool = True,
    tokenizers: bool = True,
    batch_rows: int = BATCH_ROWS,
    max_examples: int = MAX_EXAMPLES,
    tokenizer_loader: Callable[[str], Any] | None = None,
    checkpoint_marker: Callable[[dict], dict | None] | None = None,
    tokenizer_dirs: dict[str | None, Path] | None = None,
) -> ValidationReport:
    """Validate the atlas at `root` against its contract; nothing is written.

    Args:
        root: the atlas directory.
        hashes: recompute every data file's sha256 for the `manifest-files` check.
        tokenizers: load each model's tokenizer for the `token-strings` and `tokenization` checks; False
            skips them (said so in the report). A tokenizer the models row names that cannot be loaded
            (offline, unknown id, none named) FAILS them, asking for a local copy (`tokenizer_dirs`): a
            claim that cannot be checked never passes. Only a synthetic atlas (manifest.json says so; its
            tokens are whitespace words) skips them.
        batch_rows: rows per Parquet batch read.
        max_examples: failing examples kept per check.
        tokenizer_loader: turns a models row's `tokenizer` into a tokenizer (default
            `AutoTokenizer.from_pretrained(..., trust_remote_code=False)`); the CLI passes one that also
            knows the built-in models, which validation itself must not import. No code named by an atlas
            is ever run: a loader must not trust remote code.
        checkpoint_marker: a models row -> its checkpoint's `routing_atlas` marker (config.json), for the
            `random-init-labels` check (default: read from a local checkpoint directory only).
        tokenizer_dirs: model slug (None: every model) -> a local tokenizer directory to load instead of the
            one the models row names (`atlas validate --tokenizer [SLUG=]DIR`); never runs its code.

    Returns:
        The report; `report.passed` is the gate.

    Raises:
        AtlasNotFoundError: `root` is missing, not a directory, or has no usable manifest.
    """
    root = Path(root)
    if not root.exists():
        raise AtlasNotFoundError(f"{root} does not exist")
    if not root.is_dir():
        raise AtlasNotFoundError(f"{root} is not a directory")
    try:
        manifest = Manifest.load(root)
    except ManifestError as error:
        raise AtlasNotFoundError(str(error)) from error
    started = time.perf_counter()
    ledger = Ledger(max_examples)
    files = discover(root, manifest)
    rows: dict[str, int] = {}

    _check_manifest(root, manifest, files, ledger, hashes)
    _check_configs(files, ledger)
    gx = GXRunner(max_examples)
    models = _check_models(files, gx, ledger)
    _check_schemas(files, models, ledger)
    _check_models_consistency(files, models, ledger)
    if MODELS in files.configs:
        rows[MODELS] = sum(len(v) for v in models.values())

    registry, index = TextRegistry(), SenseIndex()
    readers = {
        SENSES: lambda paths: corpora.check_senses(paths, gx, ledger, registry, index, batch_rows),
        SENSE_PAIRS: lambda paths: corpora.check_sense_pairs(paths, gx, ledger, index, batch_rows),
        SUBSTITUTIONS: lambda paths: corpora.check_substitutions(
            paths, gx, ledger, registry, index, batch_rows
        ),
        TRACES: lambda paths: corpora.check_traces(paths, gx, ledger, registry, batch_rows),
        # The user's corpora (wic, swords, jsonl, text), beside WordNet's.
        **custom_corpora.readers(gx, ledger, registry, batch_rows),
    }
    checks = {**TEXT_CHECKS, **custom_corpora.CHECKS}
    for config, read in readers.items():
        if config in files.configs:
            with _guard(ledger, config, checks[config]):
                rows[config] = read(files.configs[config])
    registry.freeze()
    texts = tokens.read_texts(files.configs) if tokenizers else {}

    for config in files.routing_configs:
        slug = config[len(ROUTING_PREFIX) :]
        candidates = models.get(slug, [])
        model = candidates[0] if len(candidates) == 1 else None
        local = (tokenizer_dirs or {}).get(slug, (tokenizer_dirs or {}).get(None))
        if not tokenizers:
            tokenizer, problem = None, "tokenizer checks disabled (--no-tokenizer)"
        elif local is not None:
            tokenizer, problem = _load_local_tokenizer(Path(local))
        else:
            tokenizer, problem = _load_tokenizer(model, tokenizer_loader)
        with _guard(ledger, config, ROUTING_CHECKS):
            validator = RoutingValidator(
                config, files.configs[config], model, registry, gx, ledger, tokenizer, problem, batch_rows
            )
            rows[config] = validator.run()
        if model is not None and model.get("scores_top_m"):  # `atlas build --scores M` (validation/scores.py)
            with _guard(ledger, config, (SCORES_CHECK,)):
                check_scores(config, files.configs[config], model, ledger, batch_rows)
        if stores_router_inputs(model):  # `atlas build --router-inputs` (validation/router_inputs.py)
            with _guard(ledger, config, (ROUTER_INPUTS_CHECK,)):
                check_router_inputs(config, files.configs[config], model, ledger, batch_rows)
        with _guard(ledger, config, (tokens.CHECK,)):
            tokens.check_tokenization(config, files.configs[config], texts, tokenizer, problem, ledger)
        if tokenizers and tokenizer is None and model is not None and not _synthetic(manifest):
            # The tokenizer the atlas names cannot be loaded here: its token claims are unchecked, not true.
            for check in ("token-strings", tokens.CHECK):
                ledger.fail(
                    config,
                    check,
                    [
                        f"{problem}: the token claims of {config} cannot be checked here. Pass a local copy "
                        f"of the tokenizer with `atlas validate --tokenizer {slug}=DIR`, or skip these checks "
                        "knowingly with --no-tokenizer"
                    ],
                )
        with _guard(ledger, config, (coverage.CHECK,)):
            coverage.check_coverage(config, files.configs[config], manifest, files.configs, tokenizer, ledger)

    card, meta = None, None
    with _guard(ledger, ATLAS, ("card-configs", "card-current")):
        card, meta = claims.check_card(root, manifest, ledger)
    with _guard(ledger, MODELS, ("random-init-labels",)):
        marker = checkpoint_marker or claims.local_checkpoint_marker
        claims.check_random_init(manifest, models, ledger, card, meta, marker)
    with _guard(ledger, ATLAS, ("manifest-derived",)):
        claims.check_manifest_derived(root, manifest, models, ledger)
    with _guard(ledger, ATLAS, ("audit-records",)):
        claims.check_audits(manifest, ledger)
    if INTERVENTIONS_CONFIG in files.configs:  # `atlas intervene` (validation/interventions.py)
        with _guard(ledger, INTERVENTIONS_CONFIG, (INTERVENTIONS_CHECK,)):
            check_interventions(files.configs[INTERVENTIONS_CONFIG], models, ledger)

    return ValidationReport(
        root=str(root),
        results=ledger.results(),
        rows=rows,
        tolerances={
            "weights_sum_rtol_by_dtype": WEIGHT_SUM_RTOL,
            "weights_sum_rtol": "max(storage dtype's, compute dtype's)",
            "min_tokens_for_degeneracy": MIN_TOKENS_FOR_DEGENERACY,
        },
        seconds=time.perf_counter() - started,
        code_version=code_version(),
    )


@contextlib.contextmanager
def _guard(ledger: Ledger, config: str, checks: tuple[str, ...]) -> Iterator[None]:
    """A check group that crashes (unreadable file, missing column) reports `error`, and the rest goes on."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any failure to read is a result, not a crash
        message = f"{type(error).__name__}: {error}"
        for check in checks:
            ledger.error(config, check, message)


# ---- directory-level checks -------------------------------------------------------------------------


def _check_manifest(root: Path, manifest: Manifest, files: AtlasFiles, ledger: Ledger, hashes: bool) -> None:
    configs = list(files.configs) + [c for c in files.unknown if c not in files.configs]
    ledger.declare(ATLAS, "manifest-files", files=len(manifest.files), sha256_checked=hashes)
    for config in configs:
        ledger.declare(config, "manifest-files")
    for problem in verify_files(root, manifest, hashes=hashes):
        config = problem.config if problem.config in configs else ATLAS
        ledger.fail(config, "manifest-files", [problem.message], failing=1)


def _check_configs(files: AtlasFiles, ledger: Ledger) -> None:
    ledger.declare(ATLAS, "configs", configs=list(files.configs))
    problems = [f"{MODELS}: no data files"] if not files.configs.get(MODELS) else []
    # A traces-only atlas is complete without the WordNet corpora; an atlas needs some routed texts.
    if not any(files.configs.get(name) for name in (SENSES, TRACES, *CUSTOM_TEXT_CONFIGS)):
        problems.append(f"no text config with data files ({SENSES}, {TRACES} or a corpus of your own)")
    if not any(files.configs.get(name) for name in files.routing_configs):
        problems.append("no routing-<slug> config with data files")
    problems += [f"{name}: not a config of the atlas contract" for name in files.unknown]
    problems += [
        f"{name}: listed in the manifest, no data files on disk"
        for name, paths in files.configs.items()
        if not paths and name not in (SENSES, TRACES, MODELS)
    ]
    if problems:
        ledger.fail(ATLAS, "configs", problems, failing=len(problems))


def _check_models(files: AtlasFiles, gx: GXRunner, ledger: Ledger) -> dict[str, list[dict]]:
    """Validate the models rows; returns slug -> rows (several when the slug is duplicated)."""
    paths = files.configs.get(MODELS)
    if not paths:
        return {}
    out: dict[str, list[dict]] = {}
    with _guard(ledger, MODELS, TEXT_CHECKS[MODELS]):
        for row in corpora.check_models(read_table(paths), gx, ledger):
            out.setdefault(str(row["model_slug"]), []).append(row)
    return out


def _schema_problems(actual: pa.Schema, declared: pa.Schema) -> list[str]:
    problems = []
    names = set(actual.names)
    declared_names = set(declared.names)
    problems += [f"missing column {name}" for name in declared.names if name not in names]
    problems += [
        f"extra column {name} ({actual.field(name).type})"
        for name in actual.names
        if name not in declared_names
    ]
    for name in declared.names:
        if name not in names:
            continue
        have, want = actual.field(name), declared.field(name)
        if not have.type.equals(want.type):
            problems.append(f"column {name}: {have.type}, declared {want.type}")
        elif have.nullable != want.nullable:
            problems.append(f"column {name}: nullable={have.nullable}, declared nullable={want.nullable}")
    if not problems and actual.names != declared.names:
        problems.append(f"column order {actual.names}, declared {declared.names}")
    for key, value in (declared.metadata or {}).items():
        have = (actual.metadata or {}).get(key)
        if have != value:
            problems.append(
                f"schema metadata {key.decode()}={have.decode() if have else None}, declared {value.decode()}"
            )
    return problems


def _check_schemas(files: AtlasFiles, models: dict[str, list[dict]], ledger: Ledger) -> None:
    for config, paths in files.configs.items():
        if not paths:
            continue
        ledger.declare(config, "schema")
        model = None
        if config.startswith(ROUTING_PREFIX):
            candidates = models.get(config[len(ROUTING_PREFIX) :], [])
            if len(candidates) != 1:
                ledger.skip(
                    config, "schema", "no single models row to declare the schema (see models-consistency)"
                )
                continue
            model = candidates[0]
        try:
            declared = schema_for(config, model)
        except (ValueError, KeyError, TypeError) as error:
            ledger.error(config, "schema", f"cannot derive the declared schema: {error}")
            continue
        for path in paths:
            try:
                actual = pq.read_schema(path)
            except Exception as error:  # noqa: BLE001
                ledger.fail(config, "schema", [f"{path.name}: unreadable ({error})"])
                continue
            problems = _schema_problems(actual, declared)
            ledger.count(config, "schema", "file schema equals declared", 1, 1 if problems else 0)
            ledger.add_examples(config, "schema", (f"{path.name}: {p}" for p in problems))


def _shape(field_type: pa.DataType) -> tuple[Any, Any, Any]:
    """(outer size, inner size, value type) of a fixed-size list of fixed-size lists, else Nones."""
    if not pa.types.is_fixed_size_list(field_type) or not pa.types.is_fixed_size_list(field_type.value_type):
        return None, None, None
    return field_type.list_size, field_type.value_type.list_size, field_type.value_type.value_type


def _check_models_consistency(files: AtlasFiles, models: dict[str, list[dict]], ledger: Ledger) -> None:
    routing = set(files.routing_configs)
    if MODELS in files.configs:
        ledger.declare(MODELS, "models-consistency")
        for slug in models:
            if ROUTING_PREFIX + slug not in routing:
                ledger.fail(
                    MODELS,
                    "models-consistency",
                    [f"models row {slug!r} has no {ROUTING_PREFIX}{slug} config"],
                )
    for config in sorted(routing):
        ledger.declare(config, "models-consistency")
        candidates = models.get(config[len(ROUTING_PREFIX) :], [])
        if len(candidates) != 1:
            ledger.fail(
                config, "models-consistency", [f"{len(candidates)} models rows for {config}, expected 1"]
            )
            continue
        model = candidates[0]
        try:
            layers, k, n = len(model["moe_layers"]), int(model["top_k"]), int(model["n_routed_experts"])
            id_type = expert_id_type(n)
        except (TypeError, ValueError, KeyError) as error:
            ledger.fail(config, "models-consistency", [f"models row unusable: {error}"])
            continue
        for path in files.configs[config]:
            try:
                schema = pq.read_schema(path)
            except Exception:  # noqa: BLE001 - reported by the schema check
                continue
            problems = []
            for column in ("experts", "weights"):
                if column not in schema.names:
                    continue
                outer, inner, value_type = _shape(schema.field(column).type)
                if (outer, inner) != (layers, k):
                    problems.append(
                        f"{column} is [{outer}][{inner}], models row: {layers} moe_layers, top_k {k}"
                    )
                if column == "experts" and value_type is not None and not value_type.equals(id_type):
                    problems.append(f"expert ids are {value_type}, models row's {n} experts need {id_type}")
            stored = (schema.metadata or {}).get(b"routing_atlas.weights_dtype")
            wanted = (model["weights_dtype"] or "none").encode()
            if stored is not None and stored != wanted:
                problems.append(
                    f"weights_dtype {stored.decode()} in the file, {wanted.decode()} in the models row"
                )
            ledger.count(config, "models-consistency", "file agrees with models row", 1, 1 if problems else 0)
            ledger.add_examples(config, "models-consistency", (f"{path.name}: {p}" for p in problems))


def _synthetic(manifest: Manifest) -> bool:
    """A synthetic atlas (`atlas_build.atlas.synthetic`): whitespace tokens, no tokenizer to load, and said."""
    kinds = {b.get("kind") for b in manifest.builds if isinstance(b, dict)}
    return kinds == {"synthetic"} and bool(manifest.corpus_counts.get("synthetic"))


def _load_local_tokenizer(path: Path) -> tuple[Any, str | None]:
    """A tokenizer from a local directory the user gave, without its code and without the network."""
    if not path.is_dir():
        return None, f"tokenizer not available: --tokenizer {path} is not a directory"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True), None
    except Exception as error:  # noqa: BLE001 - missing or broken files: not available
        return None, f"tokenizer not available: --tokenizer {path} ({type(error).__name__}: {error})"


def _load_tokenizer(model: dict | None, loader: Callable[[str], Any] | None = None) -> tuple[Any, str | None]:
    """The model's tokenizer, or None and why not (transformers is imported only here)."""
    if model is None:
        return None, "no single models row (see models-consistency)"
    spec = model.get("tokenizer")
    if not spec:
        return None, "tokenizer not available: the models row names none"
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            if loader is not None:
                return loader(spec), None
            return AutoTokenizer.from_pretrained(spec, trust_remote_code=False), None
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as error:  # noqa: BLE001 - offline, unknown id, missing files: all mean "not available"
        return None, f"tokenizer not available: {spec} ({type(error).__name__})"
