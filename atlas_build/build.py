"""One build: corpora -> engine -> routing shards -> manifest and card.

The routed texts are split into deterministic shards of `texts_per_shard` texts. Each shard is written
atomically and then marked done (`.atlas/shards/<config>/<shard>.json`: file hash, row count, hash of the
shard's inputs), so a rerun into the same directory skips finished shards and redoes the rest.

Failure and recovery: the build holds the atlas lock (`atlas_build.atlas.lock`) throughout, loads the model before
writing anything (a bad model name or an unsupported model leaves the directory as it was), and saves the
manifest only after a whole step (corpora; routing + models). A build killed at any point resumes where it
stopped; a failed write (a full disk) removes its temporary file and leaves no unmarked shard behind.
`crash_point(event)` calls mark the protocol's steps for the crash tests (inert outside them).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.lock import AtlasLock
from atlas_build.atlas.manifest import Manifest
from atlas_build.atlas.routing import routing_table
from atlas_build.atlas.schema import (
    FIXED_SCHEMAS,
    MODELS,
    MODELS_SCHEMA,
    SENSE_PAIRS,
    SENSES,
    SUBSTITUTIONS,
    TEXT_ID_COLUMN,
    check_slug,
    routing_config_name,
    routing_schema,
    slugify,
)
from atlas_build.atlas.store import write_config
from atlas_build.atlas.writer import (
    AtlasWriteError,
    WrittenFile,
    crash_point,
    remove_temp_files,
    sha256_file,
    write_parquet_atomic,
    write_text_atomic,
)
from atlas_build.errors import BuildOptionsError
from atlas_build.executors import EXECUTORS
from atlas_build.executors.base import ShardTask

CORPORA = ("wordnet", "traces")
WEIGHT_STORAGE = ("float16", "float32")


@dataclass
class BuildConfig:
    """Options of `atlas build`; see `atlas build --help` for each."""

    model: str
    out: Path
    corpus: str = "wordnet"
    # Corpus options: part of the atlas's identity (a second model must route the same texts).
    max_lemmas: int | None = None
    wordnet_dir: str | None = None
    traces: str | None = None
    seed: int = 0
    # Engine options.
    engine: str = "hf"
    revision: str | None = None
    device: str = "cpu"
    device_map: str | None = None
    dtype: str = "float32"
    batch_size: int = 16
    trust_remote_code: bool = False
    random_init: bool = False
    # Engine-specific keyword arguments, passed to the engine as they are (vllm: tensor_parallel_size).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Storage: float16 halves the routing bytes; the order is taken from float32 before rounding.
    weights_dtype: str = "float16"
    slug: str | None = None
    texts_per_shard: int = 512
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.corpus not in CORPORA:
            raise BuildOptionsError(f"--corpus must be one of {CORPORA}, got {self.corpus!r}")
        if self.max_lemmas is not None and self.max_lemmas < 1:
            raise BuildOptionsError(f"--max-lemmas must be at least 1, got {self.max_lemmas}")
        if self.batch_size < 1:
            raise BuildOptionsError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.texts_per_shard < 1:
            raise BuildOptionsError(f"--texts-per-shard must be at least 1, got {self.texts_per_shard}")
        if self.weights_dtype not in WEIGHT_STORAGE:
            raise BuildOptionsError(
                f"--weights-dtype must be one of {WEIGHT_STORAGE}, got {self.weights_dtype!r}"
            )
        if self.corpus == "traces" and not self.traces:
            raise BuildOptionsError("--corpus traces needs --traces FILE.jsonl")
        if self.out.exists() and not self.out.is_dir():
            raise BuildOptionsError(f"--out {self.out} is a file; pass a directory for the atlas")
        if self.slug is not None:
            try:
                check_slug(self.slug)
            except ValueError as error:
                raise BuildOptionsError(str(error)) from None

    def corpus_options(self) -> dict[str, Any]:
        return {"corpus": "wordnet", "max_lemmas": self.max_lemmas, "seed": self.seed}

    def engine_options(self) -> dict[str, Any]:
        keys = (
            "engine",
            "revision",
            "device",
            "device_map",
            "dtype",
            "batch_size",
            "random_init",
            "weights_dtype",
            "engine_kwargs",
        )
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class TextItem:
    """A text to route: its id in its corpus config, its target span (-1, -1 when none), and labelled
    character spans `(name, start, end)` for trace segments and reasoning markers."""

    source_id: str
    corpus: str
    text: str
    target_start: int = -1
    target_end: int = -1
    segments: tuple[tuple[str, int, int], ...] = ()
    markers: tuple[tuple[str, int, int], ...] = ()


@dataclass
class BuildStats:
    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    shards_skipped: int = 0
    files: int = 0
    bytes: int = 0
    routing_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Routing throughput: tokens routed and written per second of the routing step."""
        return self.tokens / self.routing_seconds if self.routing_seconds > 0 else 0.0


# ---- corpora --------------------------------------------------------------------------------------
def wordnet_corpora_present(config: BuildConfig, manifest: Manifest) -> bool:
    """Whether the atlas already holds the WordNet corpora; refuses a conflicting --max-lemmas."""
    existing = manifest.corpus_counts.get("options")
    if existing is not None and SENSES in manifest.configs():
        # Every model of an atlas routes the same texts: the corpus of the first build is reused, and a
        # conflicting --max-lemmas is refused rather than silently mixing two corpora.
        if config.max_lemmas is not None and config.max_lemmas != existing.get("max_lemmas"):
            raise BuildOptionsError(
                f"{config.out} holds WordNet corpora built with --max-lemmas {existing.get('max_lemmas')}, "
                f"not {config.max_lemmas}: every model of an atlas routes the same texts, so build into a new "
                "directory, or leave out --max-lemmas to reuse the atlas's corpus"
            )
        return True
    return False


def ensure_wordnet_corpora(config: BuildConfig, manifest: Manifest) -> bool:
    """Write senses, sense-pairs and substitutions unless the atlas already holds them (same options).

    Returns:
        Whether the corpora were written (the manifest, updated in memory, then needs saving).
    """
    from atlas_build.corpora import CORPUS_NOTES, build_wordnet_corpora, corpus_counts, describe_source

    if wordnet_corpora_present(config, manifest):
        return False
    tables = build_wordnet_corpora(
        wordnet_dir=config.wordnet_dir, max_lemmas=config.max_lemmas, seed=config.seed
    )
    crash_point("corpus-before-write")
    for name in (SENSES, SENSE_PAIRS, SUBSTITUTIONS):
        write_config(config.out, manifest, name, tables[name], FIXED_SCHEMAS[name])
    # Other corpora's counts (traces) stay.
    manifest.corpus_counts = {
        **manifest.corpus_counts,
        **corpus_counts(tables),
        "options": config.corpus_options(),
        # For the card, which never imports corpora: where WordNet came from and how the corpora were made.
        "source": describe_source(config.wordnet_dir),
        "notes": list(CORPUS_NOTES),
    }
    return True


def read_config(root: Path, manifest: Manifest, config: str) -> pa.Table:
    files = manifest.config_files(config)
    if not files:
        return FIXED_SCHEMAS[config].empty_table()
    return pa.concat_tables([pq.read_table(root / rel, schema=FIXED_SCHEMAS[config]) for rel in files])


def wordnet_texts(root: Path, manifest: Manifest) -> list[TextItem]:
    """Every sense example, then every substitution, each sorted by id (a fixed order for sharding)."""
    items: list[TextItem] = []
    for name in (SENSES, SUBSTITUTIONS):
        table = read_config(root, manifest, name)
        if table.num_rows == 0:
            continue
        table = table.sort_by(TEXT_ID_COLUMN[name])
        ids, texts = table.column(TEXT_ID_COLUMN[name]).to_pylist(), table.column("text").to_pylist()
        starts, ends = table.column("target_start").to_pylist(), table.column("target_end").to_pylist()
        items.extend(TextItem(*row) for row in zip(ids, [name] * len(ids), texts, starts, ends, strict=True))
    return items


# ---- routing shards -------------------------------------------------------------------------------
def shard_inputs_sha256(items: list[TextItem], run_key: str = "") -> str:
    """Hash of a shard's texts and `run_key` (see `run_fingerprint`): a marker only counts for the same."""
    digest = hashlib.sha256()
    if run_key:
        digest.update(run_key.encode())
    for item in items:
        digest.update(json.dumps(asdict(item), ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def span_labels(
    char_spans: np.ndarray, token_counts: np.ndarray, items: list[TextItem], field_name: str
) -> list[str | None] | None:
    """Per-token label from the items' `(name, start, end)` spans: a token takes the name of the first span it
    overlaps (special tokens, with no characters, take none). None when no item has such spans."""
    if not any(getattr(item, field_name) for item in items):
        return None
    labels = np.full(len(char_spans), None, dtype=object)
    offset = 0
    for item, count in zip(items, token_counts.tolist(), strict=True):
        spans = char_spans[offset : offset + count]
        for name, start, end in reversed(getattr(item, field_name)):  # reversed: the first span wins
            hit = (spans[:, 0] >= 0) & (spans[:, 0] < end) & (spans[:, 1] > start)
            labels[offset : offset + count][hit] = name
        offset += count
    return labels.tolist()


def shard_table(engine, items: list[TextItem], schema: pa.Schema, weights_stored: bool) -> pa.Table:
    """Route one shard's texts and return its routing rows."""
    batch = engine.route([item.text for item in items])
    starts = np.repeat(np.array([item.target_start for item in items], dtype=np.int64), batch.token_counts)
    ends = np.repeat(np.array([item.target_end for item in items], dtype=np.int64), batch.token_counts)
    spans = batch.char_spans
    is_target = (spans[:, 0] >= 0) & (spans[:, 0] < ends) & (spans[:, 1] > starts)
    return routing_table(
        schema,
        source_ids=[item.source_id for item in items],
        corpus=[item.corpus for item in items],
        token_counts=batch.token_counts,
        token_ids=batch.token_ids,
        tokens=batch.tokens,
        char_spans=spans,
        is_target=is_target,
        experts=batch.experts,
        weights=batch.weights if weights_stored else None,
        segment=span_labels(spans, batch.token_counts, items, "segments"),
        marker=span_labels(spans, batch.token_counts, items, "markers"),
    )


def run_fingerprint(row: dict[str, Any], schema: pa.Schema) -> str:
    """What a routing shard's bytes depend on besides its texts: the model, the compute dtype and the schema.

    Part of the shard key, so that resuming with another checkpoint under the same slug, another --dtype or
    another --weights-dtype redoes the shards instead of mixing two runs in one config.
    """
    keys = ("model_id", "revision", "checkpoint_sha256", "engine", "dtype", "random_init", "seed")
    identity = {key: row.get(key) for key in keys}
    return json.dumps({**identity, "schema": schema.to_string()}, sort_keys=True, default=str)


def check_text_lengths(engine, items: list[TextItem], chunk: int = 1024) -> None:
    """Refuse texts longer than the model's context before routing anything, naming them."""
    limit = engine.max_length
    if limit is None:
        return
    from atlas_build.engines.hf import TextTooLongError

    too_long: list[tuple[TextItem, int]] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        ids = engine.tokenizer([item.text for item in part], add_special_tokens=True)["input_ids"]
        too_long += [(item, len(i)) for item, i in zip(part, ids, strict=True) if len(i) > limit]
    if too_long:
        named = ", ".join(f"{item.corpus} {item.source_id!r} ({n} tokens)" for item, n in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise TextTooLongError(
            f"{len(too_long)} text(s) are longer than the model's context of {limit} tokens: {named}{more}. "
            "Nothing was routed: split or drop those texts, or use a model with a longer context"
        )


class ShardWorker:
    """Routes shard tasks and writes each shard atomically, then its done-marker.

    Picklable before first use (the engine is built lazily), so the Ray executor can ship it to workers.
    """

    def __init__(self, config: BuildConfig, schema: pa.Schema, weights_stored: bool, engine=None):
        self.config = config
        self.schema = schema
        self.weights_stored = weights_stored
        self._engine = engine

    def __getstate__(self):
        return {**self.__dict__, "_engine": None}

    def __call__(self, task: ShardTask) -> WrittenFile:
        if self._engine is None:
            self._engine = make_engine(self.config)
        layout = AtlasLayout(self.config.out)
        crash_point("shard-before-write")
        table = shard_table(self._engine, list(task.items), self.schema, self.weights_stored)
        path = layout.shard_path(task.config, task.index, task.part)
        written = write_parquet_atomic(table, path, self.schema)
        crash_point("marker-before-write")
        try:
            mark_shard_done(layout, task.config, task.index, written, task.inputs_sha256, task.part)
        except BaseException:
            # Unmarked, the shard would be redone anyway: drop it, so that a failed write (a full disk)
            # leaves the atlas as it was before the shard began.
            path.unlink(missing_ok=True)
            raise
        crash_point("marker-written")
        return written


def done_shard(
    layout: AtlasLayout, config: str, shard: int, inputs_sha256: str, part: str = ""
) -> WrittenFile | None:
    """The finished shard, when its marker matches these inputs and the file's checksum (else None)."""
    marker = layout.marker_path(config, shard, part)
    path = layout.shard_path(config, shard, part)
    if not marker.exists() or not path.exists():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("inputs_sha256") != inputs_sha256:
        return None
    # The one read of the file on resume: its checksum, checked against the marker and then recorded.
    digest = sha256_file(path)
    rows = done.get("rows")
    if done.get("sha256") != digest or not isinstance(rows, int):
        return None
    return WrittenFile(path, digest, rows, path.stat().st_size)


def mark_shard_done(
    layout: AtlasLayout, config: str, shard: int, written: WrittenFile, inputs_sha256: str, part: str = ""
) -> None:
    payload = {
        "sha256": written.sha256,
        "rows": written.rows,
        "bytes": written.bytes,
        "inputs_sha256": inputs_sha256,
    }
    write_text_atomic(layout.marker_path(config, shard, part), json.dumps(payload) + "\n")


# ---- the build ------------------------------------------------------------------------------------
def model_slug(config: BuildConfig, engine) -> str:
    if config.slug:
        return config.slug
    base = slugify(config.model)
    return f"{base}-random-init" if config.random_init else base


def merge_models_row(root: Path, manifest: Manifest, row: dict[str, Any]) -> pa.Table:
    rows = [
        r for r in read_config(root, manifest, MODELS).to_pylist() if r["model_slug"] != row["model_slug"]
    ]
    rows.append(row)
    rows.sort(key=lambda r: r["model_slug"])
    return pa.Table.from_pylist(rows, schema=MODELS_SCHEMA)


def check_slug_free(root: Path, manifest: Manifest, row: dict[str, Any]) -> None:
    """A slug already in the atlas may only be rebuilt (resumed) by the same checkpoint."""
    for existing in read_config(root, manifest, MODELS).to_pylist():
        if existing["model_slug"] != row["model_slug"]:
            continue
        same = all(
            existing.get(k) == row.get(k) for k in ("model_id", "checkpoint_sha256", "random_init", "engine")
        )
        if not same:
            raise BuildOptionsError(
                f"the atlas already has a model with slug {row['model_slug']!r} ({existing['model_id']}, "
                f"{existing['engine']}); pass --slug to give this one another name"
            )


def make_engine(config: BuildConfig, load_weights: bool = True):
    """The build's engine. `load_weights=False`: the architecture only (meta device), for the driver of a
    distributed build, whose workers load the weights."""
    from atlas_build.engines import ENGINES

    engine_cls = ENGINES.get(config.engine)
    return engine_cls(
        config.model,
        revision=config.revision,
        dtype=config.dtype,
        device=config.device,
        device_map=config.device_map,
        batch_size=config.batch_size,
        trust_remote_code=config.trust_remote_code,
        random_init=config.random_init,
        seed=config.seed,
        load_weights=load_weights,
        **config.engine_kwargs,
    )


def run_build(config: BuildConfig, log=print) -> BuildStats:
    """Build (or resume) the atlas at `config.out` for one model. Returns the run's statistics."""
    from tqdm.auto import tqdm

    from dataset_cards.render import write_card

    root = config.out
    layout = AtlasLayout(root)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AtlasWriteError(
            f"cannot create the atlas directory {root}: {error.strerror or error}"
        ) from error
    try:
        with AtlasLock(root) as lock:
            manifest = Manifest.load_or_new(root)
            if lock.stale_recovered:
                pid = (lock.previous_owner or {}).get("pid", "unknown")
                log(f"resuming the interrupted build (pid {pid}) in {root}: finished shards are kept")
            # Temporary files of a killed writer: safe to remove while holding the lock.
            remove_temp_files(root)
            started = time.perf_counter()
            # Inputs that cannot be used are refused before a model is loaded (minutes for a large one).
            if config.corpus == "wordnet" and not wordnet_corpora_present(config, manifest):
                from atlas_build.corpora import find_wordnet_dir

                find_wordnet_dir(config.wordnet_dir)
            elif config.corpus == "traces":
                from atlas_build.corpora.traces import read_traces

                read_traces(config.traces)
            # The model before anything is written: a typo, a dense or an unsupported model, a corrupt
            # checkpoint leaves the directory as it was.
            # A distributed build's driver needs only the models row and the tokenizer: no weights.
            engine = make_engine(config, load_weights=config.executor == "local")
            if config.corpus == "wordnet":
                if ensure_wordnet_corpora(config, manifest):
                    crash_point("corpus-written")
                    # The atlas is consistent after each step: corpora first, then the routing.
                    manifest.save(root)
                    crash_point("corpus-saved")
                    write_card(root)
                items = wordnet_texts(root, manifest)
            else:
                from atlas_build.corpora.traces import ensure_traces  # the traces corpus

                items = ensure_traces(config, manifest, engine=engine)
                write_card(root)
            if not items:
                raise BuildOptionsError("the corpus is empty after filtering: nothing to route")

            row = engine.model_row()
            row["model_slug"] = model_slug(config, engine)
            weights_stored = engine.returns_weights
            row["weights_dtype"] = config.weights_dtype if weights_stored else None
            check_slug_free(root, manifest, row)
            check_text_lengths(engine, items)
            routing_name = routing_config_name(row["model_slug"])
            schema = routing_schema(
                row["n_routed_experts"], len(row["moe_layers"]), row["top_k"], row["weights_dtype"]
            )
            run_key = run_fingerprint(row, schema)

            # Each corpus has its own shards in the model's routing config: a traces build never replaces
            # the WordNet routing of the same model, nor the other way round.
            part = "" if config.corpus == "wordnet" else config.corpus
            tasks = [
                ShardTask(routing_name, n, tuple(chunk), shard_inputs_sha256(chunk, run_key), part)
                for n, chunk in enumerate(
                    items[i : i + config.texts_per_shard]
                    for i in range(0, len(items), config.texts_per_shard)
                )
            ]
            finished = {
                task.index: found
                for task in tasks
                if (found := done_shard(layout, routing_name, task.index, task.inputs_sha256, part))
            }
            todo = [task for task in tasks if task.index not in finished]
            stats = BuildStats(texts=len(items), shards_skipped=len(finished), shards_written=len(todo))
            log(
                f"routing {len(items)} texts with {config.model} ({row['model_slug']}): "
                f"{len(tasks)} shards, {len(finished)} already done"
            )
            bar = tqdm(total=len(items), unit="text", desc=routing_name, disable=not config.progress)
            bar.update(sum(task.n_texts for task in tasks if task.index in finished))
            executor = EXECUTORS.get(config.executor)(**config.executor_options)
            worker = ShardWorker(
                config, schema, weights_stored, engine=engine if config.executor == "local" else None
            )
            routing_started = time.perf_counter()
            fresh = executor.run(todo, lambda: worker, progress=lambda task: bar.update(task.n_texts))
            stats.routing_seconds = time.perf_counter() - routing_started
            bar.close()
            engine.close()
            crash_point("routing-done")
            stats.tokens = sum(w.rows for w in fresh)
            finished.update((task.index, w) for task, w in zip(todo, fresh, strict=True))
            written = [finished[task.index] for task in tasks]
            # Shards of this corpus beyond this build's count belong to an older, larger corpus.
            own_shard = layout.shard_name_pattern(routing_name, part)
            keep = {w.path.name for w in written}
            for stale in layout.config_dir(routing_name).glob(f"{routing_name}-*.parquet"):
                if own_shard.match(stale.name) and stale.name not in keep:
                    stale.unlink()
            manifest.drop_files(routing_name, lambda rel: own_shard.match(Path(rel).name) is not None)
            for result in written:
                manifest.record(root, routing_name, result)
            write_config(root, manifest, MODELS, merge_models_row(root, manifest, row), MODELS_SCHEMA)
            crash_point("models-written")
            stats.seconds = time.perf_counter() - started
            manifest.builds.append(
                {
                    "kind": "routing",
                    "model_slug": row["model_slug"],
                    "model": config.model,
                    "corpus": config.corpus_options()
                    if config.corpus == "wordnet"
                    else {"corpus": "traces", "traces": Path(config.traces).name},
                    "engine": config.engine_options(),
                    "model_notes": engine.model_notes(),
                    "code_version": manifest.code_version,
                    "stats": {
                        "texts": stats.texts,
                        "tokens_routed": stats.tokens,
                        "seconds": round(stats.seconds, 2),
                    },
                    "summary": (
                        f"atlas build --model {config.model} --corpus {config.corpus} --engine {config.engine} "
                        f"--dtype {config.dtype} --seed {config.seed}"
                        + (f" --max-lemmas {config.max_lemmas}" if config.max_lemmas else "")
                        + (" --random-init" if config.random_init else "")
                        + (f" --traces {Path(config.traces).name}" if config.corpus == "traces" else "")
                    ),
                }
            )
            manifest.save(root)
            crash_point("manifest-saved")
            write_card(root)
            crash_point("build-done")
            stats.files = len(manifest.files)
            stats.bytes = sum(entry["bytes"] for entry in manifest.files.values())
            return stats
    except BaseException:
        # A build that failed before writing anything leaves no empty directory behind.
        if (
            created
            and root.exists()
            and not any(p for p in root.iterdir() if p.name != layout.state_dir.name)
        ):
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        raise
