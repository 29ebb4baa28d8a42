"""One build as named steps: prepare, corpora, plan, route, record, finish. `run_build` runs them in order."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.atlas.lock import AtlasLock
from atlas_build.atlas.manifest import Manifest, refuse_inside_release, refuse_published_release
from atlas_build.atlas.schema import (
    MODELS,
    MODELS_SCHEMA,
    routing_config_name,
    routing_schema,
)
from atlas_build.atlas.shards import done_shard, shard_inputs_sha256
from atlas_build.atlas.store import write_config
from atlas_build.atlas.texts import TextItem
from atlas_build.atlas.writer import (
    AtlasWriteError,
    WrittenFile,
    crash_point,
    remove_temp_files,
    write_text_atomic,
)
from atlas_build.builder.options import CUSTOM_CORPUS_INPUTS, BuildConfig, BuildStats
from atlas_build.builder.outdir import check_out_dir
from atlas_build.builder.shards import (
    ShardWorker,
    check_slug_free,
    check_text_lengths,
    make_engine,
    merge_models_row,
    model_slug,
    run_fingerprint,
    storage_change,
)
from atlas_build.builder.texts import ensure_wordnet_corpora, wordnet_corpora_present, wordnet_texts
from atlas_build.errors import BuildOptionsError
from atlas_build.executors import EXECUTORS
from atlas_build.executors.base import ShardTask


@dataclass
class BuildRun:
    """What the steps of one build hand each other. Filled in step by step: `items` by `corpora`, the
    routing plan (`row`, `schema`, `tasks`, `finished`) by `plan`, `written` by `route`."""

    config: BuildConfig
    manifest: Manifest
    log: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    engine: Any = None
    items: list[TextItem] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: pa.Schema | None = None
    tasks: list[ShardTask] = field(default_factory=list)
    finished: dict[int, WrittenFile] = field(default_factory=dict)
    written: list[WrittenFile] = field(default_factory=list)
    stats: BuildStats = field(default_factory=BuildStats)
    # The runs of this build so far (the first and every resume of it), from `.atlas/runs/` (`runs_path`).
    runs: list[dict[str, Any]] = field(default_factory=list)
    # A user's corpus (--corpus wic|swords|jsonl|text), read and checked whole before the model loads.
    custom: Any = None
    # --replace-routing with other storage settings: the shards of every corpus of the routing config go.
    replace_all: bool = False

    @property
    def root(self) -> Path:
        return self.config.out

    @property
    def layout(self) -> AtlasLayout:
        return AtlasLayout(self.config.out)

    @property
    def routing_name(self) -> str:
        return routing_config_name(self.row["model_slug"])

    @property
    def runs_path(self) -> Path:
        """`.atlas/runs/<routing config>[-<part>].json`: the runs of a build not finished yet (removed when
        it is), so that its record sums every run's work and names the resumes."""
        return self.layout.state_path(
            "runs", f"{self.routing_name}{'-' + self.part if self.part else ''}.json"
        )

    @property
    def part(self) -> str:
        # Each corpus has its own shards in the model's routing config: a traces build never replaces
        # the WordNet routing of the same model, nor the other way round.
        return "" if self.config.corpus == "wordnet" else self.config.corpus


def run_build(config: BuildConfig, log=print) -> BuildStats:
    """Build (or resume) the atlas at `config.out` for one model. Returns the run's statistics.

    The steps, each a function of its own: prepare (directory, lock, manifest; inputs checked and the model
    loaded before anything is written), corpora, plan, route, record, finish.
    """
    with prepare(config, log) as run:
        corpora(run)
        plan(run)
        route(run)
        record(run)
        finish(run)
        return run.stats


@contextmanager
def prepare(config: BuildConfig, log: Callable[[str], None]) -> Iterator[BuildRun]:
    """Check the output folder, create it, hold the atlas lock for the whole build, refuse unusable inputs
    and load the model, all before anything is written.

    A build that fails before writing removes only what it made itself and only when it is still empty
    (`rmdir`, never a recursive removal): a folder another build has meanwhile locked or written into
    stays as it is, whoever created it.
    """
    config.out = root = check_out_dir(config.out)
    refuse_published_release(root, "building into it")
    refuse_inside_release(root, f"building an atlas at {root}")
    check_engine_and_executor(config)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AtlasWriteError(
            f"cannot create the atlas directory {root}: {error.strerror or error}"
        ) from error
    try:
        with AtlasLock(root) as lock:
            run = BuildRun(config, Manifest.load_or_new(root), log)
            if lock.stale_recovered:
                pid = (lock.previous_owner or {}).get("pid", "unknown")
                log(f"resuming the interrupted build (pid {pid}) in {root}: finished shards are kept")
            # Temporary files of a killed writer: safe to remove while holding the lock.
            remove_temp_files(root)
            check_corpus_inputs(run)
            # A typo, a dense or an unsupported model, a corrupt checkpoint leaves the directory as it was.
            # A distributed build's driver needs only the models row and the tokenizer: no weights.
            run.engine = make_engine(config, load_weights=config.executor == "local")
            yield run
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()  # fails, removing nothing, unless the folder is still empty
        raise


def check_engine_and_executor(config: BuildConfig) -> None:
    """An unknown --executor or --engine is refused before anything is written (not after the corpus step)."""
    from atlas_build.engines import ENGINES

    for registry, name in ((EXECUTORS, config.executor), (ENGINES, config.engine)):
        if name not in registry:
            raise BuildOptionsError(registry.unknown_message(name))


def check_corpus_inputs(run: BuildRun) -> None:
    """Inputs that cannot be used are refused before a model is loaded (minutes for a large one)."""
    config = run.config
    if config.corpus == "wordnet" and not wordnet_corpora_present(config, run.manifest):
        from atlas_build.corpora import find_wordnet_dir

        find_wordnet_dir(config.wordnet_dir)
    elif config.corpus == "traces":
        from atlas_build.corpora.traces import read_traces

        read_traces(config.traces)
    elif config.corpus in CUSTOM_CORPUS_INPUTS:
        from atlas_build.builder.user_corpora import read_custom_corpus

        run.custom = read_custom_corpus(config)


def corpora(run: BuildRun) -> None:
    """Write the corpus configs (unless the atlas has them) and collect the texts to route.

    The atlas is consistent after this step: the manifest is saved, and the card shows the new configs.
    """
    from dataset_cards.render import write_card

    config, root = run.config, run.root

    def lengths(items):  # texts longer than the model's context: refused before anything is written
        check_text_lengths(run.engine, items)

    if config.corpus == "wordnet":
        if ensure_wordnet_corpora(config, run.manifest, log=run.log, check=lengths):
            crash_point("corpus-written")
            run.manifest.save(root)
            crash_point("corpus-saved")
            write_card(root)
        run.items = wordnet_texts(root, run.manifest)
    elif config.corpus in CUSTOM_CORPUS_INPUTS:
        from atlas_build.builder.user_corpora import corpus_texts, custom_texts, ensure_custom_corpus

        lengths(corpus_texts(run.custom))
        if ensure_custom_corpus(config, run.manifest, run.custom):
            crash_point("corpus-written")
            run.manifest.save(root)
            write_card(root)
        run.items = custom_texts(root, run.manifest, config.corpus)
    else:
        from atlas_build.corpora.traces import ensure_traces

        run.items = ensure_traces(config, run.manifest, engine=run.engine)
        write_card(root)
    if not run.items:
        raise BuildOptionsError("the corpus is empty after filtering: nothing to route")


def plan(run: BuildRun) -> None:
    """The models row, the routing schema and the shards: which are done (their markers match) and which not."""
    config, engine = run.config, run.engine
    row = engine.model_row()
    row["model_slug"] = model_slug(config)
    row["weights_dtype"] = config.weights_dtype if engine.returns_weights else None
    run.row = row
    check_slug_free(run.root, run.manifest, row)
    run.replace_all = storage_change(run.root, run.manifest, row, config.replace_routing, run.routing_name)
    if run.replace_all:
        run.log(f"{run.routing_name}: other storage settings, so the routing of every corpus is replaced")
    check_text_lengths(engine, run.items)
    run.schema = routing_schema(
        row["n_routed_experts"],
        len(row["moe_layers"]),
        row["top_k"],
        row["weights_dtype"],
        row.get("scores_top_m"),
        len(row.get("router_input_layers") or []) or None,
        row.get("router_input_dim"),
    )
    # Taken before routing (the engine frees its model after): what the shard key and the record say.
    run.provenance = engine.provenance()
    run_key = run_fingerprint(row, run.schema, config, run.provenance)
    size = config.texts_per_shard
    chunks = (run.items[i : i + size] for i in range(0, len(run.items), size))
    run.tasks = [
        ShardTask(run.routing_name, n, tuple(chunk), shard_inputs_sha256(chunk, run_key), run.part)
        for n, chunk in enumerate(chunks)
    ]
    run.finished = {
        task.index: found
        for task in run.tasks
        if (found := done_shard(run.layout, run.routing_name, task.index, task.inputs_sha256, run.part))
    }


def route(run: BuildRun) -> None:
    """Route the shards that are not done, with the configured executor; each is written and marked as it lands."""
    from tqdm.auto import tqdm

    config, tasks = run.config, run.tasks
    todo = [task for task in tasks if task.index not in run.finished]
    run.stats = BuildStats(texts=len(run.items), shards_skipped=len(run.finished), shards_written=len(todo))
    run.log(
        f"routing {len(run.items)} texts with {config.model} ({run.row['model_slug']}): "
        f"{len(tasks)} shards, {len(run.finished)} already done"
    )
    bar = tqdm(total=len(run.items), unit="text", desc=run.routing_name, disable=not config.progress)
    bar.update(sum(task.n_texts for task in tasks if task.index in run.finished))
    executor = EXECUTORS.get(config.executor)(**config.executor_options)
    local = config.executor == "local"
    worker = ShardWorker(config, run.schema, run.engine.returns_weights, engine=run.engine if local else None)
    start_run(run, todo)
    routing_started = time.perf_counter()
    fresh = executor.run(todo, lambda: worker, progress=lambda task: bar.update(task.n_texts))
    run.stats.routing_seconds = time.perf_counter() - routing_started
    bar.close()
    run.engine.close()
    crash_point("routing-done")
    run.stats.tokens = sum(w.rows for w in fresh)
    run.finished.update((task.index, w) for task, w in zip(todo, fresh, strict=True))
    run.written = [run.finished[task.index] for task in tasks]


def record(run: BuildRun) -> None:
    """Record this corpus's shards in the manifest (dropping those of an older, larger corpus) and write the
    models row."""
    root, name, layout = run.root, run.routing_name, run.layout
    own_shard = layout.shard_name_pattern(name, run.part)

    def ours(file_name: str) -> bool:
        return run.replace_all or own_shard.match(file_name) is not None

    keep = {w.path.name for w in run.written}
    for stale in layout.config_dir(name).glob(f"{name}-*.parquet"):
        if ours(stale.name) and stale.name not in keep:
            stale.unlink()
    run.manifest.drop_files(name, lambda rel: ours(Path(rel).name))
    for result in run.written:
        run.manifest.record(root, name, result)
    write_config(root, run.manifest, MODELS, merge_models_row(root, run.manifest, run.row), MODELS_SCHEMA)
    crash_point("models-written")


def finish(run: BuildRun) -> None:
    """Append the build record, save the manifest, write the card: the atlas is complete and consistent."""
    from dataset_cards.render import write_card

    stats = run.stats
    stats.seconds = time.perf_counter() - run.started
    new = build_record(run)
    chain = new["stats"]["started"]
    same = [
        i for i, b in enumerate(run.manifest.builds) if isinstance(b, dict) and _same_build(b, new, chain)
    ]
    if same and stats.shards_written == 0:
        pass  # killed after its record was saved: this run routed nothing, the record stands as it is
    elif same:
        run.manifest.builds[same[-1]] = new  # a resume after the record was saved: the sum replaces it
    elif stats.shards_written or not run.runs[0].get("shards_kept"):
        run.manifest.builds.append(new)
    # else: a rerun of a finished build that routed nothing adds no record (the atlas is unchanged).
    run.manifest.save(run.root)
    crash_point("manifest-saved")
    write_card(run.root)
    crash_point("build-done")
    with contextlib.suppress(OSError):
        run.runs_path.unlink(missing_ok=True)
        run.runs_path.parent.rmdir()  # only when empty: another model's unfinished build keeps its runs
    stats.files = len(run.manifest.files)
    stats.bytes = sum(entry["bytes"] for entry in run.manifest.files.values())


def start_run(run: BuildRun, todo: list[ShardTask]) -> None:
    """Add this run to the build's runs (`BuildRun.runs_path`); the first run also notes the shards that were
    kept from earlier builds, which are not this build's work."""
    try:
        runs = json.loads(run.runs_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        runs = []
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        runs = []
    kept = sorted(run.finished)
    runs.append(
        {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "shards_kept": len(kept),
            "shards_to_route": len(todo),
            **({} if runs else {"kept_from_earlier_builds": kept}),
        }
    )
    run.runs = runs
    write_text_atomic(run.runs_path, json.dumps(runs, indent=1) + "\n")


def _same_build(old: dict[str, Any], new: dict[str, Any], started: str) -> bool:
    """`old` is the record of this very build (saved by a run of it that was killed after saving it)."""
    return (
        old.get("kind") == "routing"
        and old.get("model_slug") == new["model_slug"]
        and old.get("corpus") == new["corpus"]
        and (old.get("stats") or {}).get("started") == started
    )


def _stats(run: BuildRun) -> dict[str, Any]:
    """The record's `stats`: every run's work summed (the shards kept from earlier builds left out)."""
    stats = run.stats
    earlier = set((run.runs[0] if run.runs else {}).get("kept_from_earlier_builds") or [])
    tokens = sum(w.rows for task, w in zip(run.tasks, run.written, strict=True) if task.index not in earlier)
    resumes = [
        # No pid or host name: the record is published (they stay in the build state, never published).
        {key: r.get(key) for key in ("started", "shards_kept", "shards_to_route")}
        for r in run.runs[1:]
    ]
    return {
        "texts": stats.texts,
        "tokens_routed": tokens,  # by every run of this build: the first and each resume
        "seconds": round(stats.seconds, 2),  # of the last run
        "started": run.runs[0]["started"] if run.runs else None,
        "runs": max(len(run.runs), 1),
        "resumes": resumes,
        "tokens_routed_last_run": stats.tokens,
        "shards": len(run.tasks),
        "shards_kept_from_earlier_builds": len(earlier),
    }


def build_record(run: BuildRun) -> dict[str, Any]:
    """The `manifest.json` `builds[]` entry of this build: what was routed, how, and the command."""
    config = run.config
    traces = config.corpus == "traces"
    custom = config.corpus in CUSTOM_CORPUS_INPUTS
    corpus = config.corpus_options()
    existing = run.manifest.corpus_counts.get("options")
    if config.corpus == "wordnet" and isinstance(existing, dict):
        # The corpus an atlas holds was made by its first build: a random-init twin's --seed is its weights'.
        corpus = {**corpus, **existing}
    if traces:
        corpus = {"corpus": "traces", "traces": Path(config.traces).name}
    elif custom:
        corpus = {"corpus": config.corpus, "input": Path(config.corpus_input()).name}
    model = run.row["model_id"]  # portable: never the build machine's path of a local checkpoint
    return {
        "kind": "routing",
        "model_slug": run.row["model_slug"],
        "model": model,
        "corpus": corpus,
        "engine": {**config.engine_options(), "provenance": run.provenance},
        "model_notes": run.engine.model_notes(),
        "code_version": run.manifest.code_version,
        "stats": _stats(run),
        # --replace-routing with other storage settings: the model's earlier corpora were dropped.
        **({"replaced_routing": True} if run.replace_all else {}),
        "summary": (
            f"atlas build --model {model} --corpus {config.corpus} --engine {config.engine} "
            f"--dtype {config.dtype} --seed {config.seed}"
            + (f" --max-lemmas {config.max_lemmas}" if config.max_lemmas else "")
            + (" --random-init" if config.random_init else "")
            + (f" --scores {config.scores}" if config.scores else "")
            + (
                f" --router-inputs {config.router_inputs} --router-input-dim {config.router_input_dim}"
                if config.router_inputs is not None
                else ""
            )
            + (" --replace-routing" if run.replace_all else "")
            + (f" --traces {Path(config.traces).name}" if traces else "")
            + (
                f" --{CUSTOM_CORPUS_INPUTS[config.corpus]} {Path(config.corpus_input()).name}"
                if custom
                else ""
            )
            + (f" --text-column {config.text_column}" if custom and config.text_column else "")
        ),
    }
