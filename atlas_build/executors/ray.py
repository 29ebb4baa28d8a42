"""Run shards on a Ray cluster: one actor per worker, each with its own engine, shards handed out as they free.

Data parallelism for either engine: `--shards N` actors, each reserving `--gpus-per-worker` GPUs (and
`--cpus-per-worker` CPUs) and building its engine once, on its first shard. With the hf engine and
`--device-map auto`, or vLLM with `--tensor-parallel-size`, one actor can span all GPUs of a node.

The atlas is the local executor's, byte for byte: shards are the same deterministic `ShardTask`s, each routed
in one `engine.route` call whatever the executor. Workers need no shared filesystem: a worker writes its
shard into a scratch folder of its node and sends the file's bytes back; the driver (which holds the atlas
lock) writes them atomically under the atlas and marks the shard done, so a rerun resumes where a crash
stopped. A failed shard is retried (`max_retries`, on a fresh actor if its actor died); user errors
(`AtlasError`: a bad checkpoint, a text too long) fail at once. The final error names the shard.

Every node needs the same environment (this package, the engine's dependencies) and the checkpoint: a
shared filesystem or a copy per node at the same path (or in each node's Hugging Face cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from atlas_build.atlas.writer import WrittenFile
from atlas_build.errors import AtlasError
from atlas_build.executors.base import Executor, ShardTask

RAY_INSTALL_HINT = "pip install -c constraints/cpu.txt 'ray>=2.40'"
# The driver's settings that workers must share: offline mode, caches, vLLM switches.
FORWARDED_ENV = (
    "ROUTING_ATLAS_CACHE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "VLLM_USE_V2_MODEL_RUNNER",
    "VLLM_BATCH_INVARIANT",
)

log = logging.getLogger(__name__)


class RayMissingError(AtlasError):
    """`--executor ray` was asked for, but Ray is not installed."""


class RayOptionsError(AtlasError):
    """Ray executor options that cannot work (no GPU for --gpus-per-worker, ...)."""


class ShardFailedError(AtlasError):
    """A shard failed on every attempt; the shards that finished are kept (rerun to resume)."""


def import_ray():
    """`import ray`, or RayMissingError with the install command."""
    try:
        import ray
    except ImportError as error:
        raise RayMissingError(
            f"--executor ray needs Ray, which is not importable here ({error}): `{RAY_INSTALL_HINT}` "
            "(or `pip install 'routing-atlas[ray]'`)"
        ) from error
    return ray


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` as the atlas writer writes a shard: a temporary file next to it (named so
    that `writer.remove_temp_files` cleans it after a crash), fsync'd, renamed, folder fsync'd."""
    from atlas_build.atlas.writer import TEMP_SUFFIX, crash_point, write_error

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("parquet-temp-written")
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, error) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass  # some file systems cannot fsync a folder
    crash_point("parquet-renamed")


class ShardRunner:
    """Body of a Ray actor: runs a `ShardWorker` recipe on shard tasks, one at a time.

    A worker with a dataclass `config` that has an `out` (the build's `ShardWorker`) is pointed at a scratch
    folder of this node, and `run` returns the written file's bytes for the driver to land. Any other
    worker callable writes where it writes (a shared filesystem is then assumed) and its `WrittenFile` is
    returned as it is.
    """

    def __init__(self, worker, torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.worker = worker
        config = getattr(worker, "config", None)
        self.copy_back = dataclasses.is_dataclass(config) and hasattr(config, "out")
        self.scratch: Path | None = None
        if self.copy_back:
            self.scratch = Path(tempfile.mkdtemp(prefix="atlas-shard-"))
            worker.config = dataclasses.replace(config, out=self.scratch)

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: ShardTask) -> tuple:
        written = self.worker(task)
        if not self.copy_back:
            return ("written", written)
        try:
            rel = written.path.resolve().relative_to(self.scratch.resolve()).as_posix()
            return ("bytes", rel, written.path.read_bytes(), written.sha256, written.rows)
        finally:
            # The scratch copy (shard and marker) has served its purpose once the bytes are sent.
            for child in self.scratch.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class RayExecutor(Executor):
    """Shards on Ray actors.

    Args:
        address: Ray cluster address ("auto", "ray://head:10001"); None starts a local Ray on this machine.
            A Ray already initialised in this process is used as it is (and not shut down).
        workers: actors (engines) to start (`--shards`); default: as many as the cluster's resources hold,
            at most one per shard.
        gpus_per_worker: GPUs each actor reserves (Ray sets its CUDA_VISIBLE_DEVICES).
        cpus_per_worker: CPUs each actor reserves.
        max_retries: extra attempts of a failed shard before the build fails.
        torch_threads: torch intra-op threads of each worker. CPU float results depend on it (reduction
            order), so workers without GPUs default to this process's count: a CPU Ray build then equals
            the local build on this machine. GPU workers keep Ray's default.
        init_kwargs: further keyword arguments of `ray.init` when this executor starts Ray.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        max_retries: int = 2,
        torch_threads: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ):
        if workers is not None and workers < 1:
            raise RayOptionsError(f"--shards (Ray workers) must be at least 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker < 0:
            raise RayOptionsError("--gpus-per-worker and --cpus-per-worker cannot be negative")
        if max_retries < 0:
            raise RayOptionsError(f"--shard-retries must be at least 0, got {max_retries}")
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)
        self.max_retries = max_retries
        self.torch_threads = torch_threads
        self.init_kwargs = dict(init_kwargs or {})

    # ---- cluster ---------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Initialise Ray unless it already is; True when this call started it (and must shut it down)."""
        if self.ray.is_initialized():
            return False
        kwargs = {"include_dashboard": False, **self.init_kwargs}
        self.ray.init(address=self.address, **kwargs)
        return True

    def _n_workers(self, n_tasks: int) -> int:
        resources = self.ray.cluster_resources()
        fits = []
        for key, need in (("GPU", self.gpus_per_worker), ("CPU", self.cpus_per_worker)):
            if need > 0:
                have = resources.get(key, 0.0)
                if have < need:
                    raise RayOptionsError(
                        f"each Ray worker asks for {need:g} {key}s but the cluster has {have:g}: lower "
                        f"--{key.lower()}s-per-worker or add nodes"
                    )
                fits.append(math.floor(have / need + 1e-9))
        wanted = self.workers if self.workers is not None else min(fits or [1])
        if fits and wanted > min(fits):
            log.warning(
                "%d Ray workers asked for, the cluster holds %d: starting %d", wanted, min(fits), min(fits)
            )
            wanted = min(fits)
        return max(1, min(wanted, n_tasks))

    def _actor_class(self):
        env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_worker,
            "num_gpus": self.gpus_per_worker,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if env:
            options["runtime_env"] = {"env_vars": env}
        return self.ray.remote(ShardRunner).options(**options)

    # ---- running ---------------------------------------------------------------------------------
    def run(self, tasks, worker_factory, progress) -> list[WrittenFile]:
        if not tasks:
            return []
        started = self._connect()
        actors: list = []
        try:
            return self._run(list(tasks), worker_factory(), progress, actors)
        finally:
            for actor in actors:
                self.ray.kill(actor, no_restart=True)
            if started:
                self.ray.shutdown()

    def _run(self, tasks: list[ShardTask], worker, progress, actors: list) -> list[WrittenFile]:
        from ray.exceptions import RayError, RayTaskError

        ray = self.ray
        config = getattr(worker, "config", None)
        root = Path(config.out) if dataclasses.is_dataclass(config) and hasattr(config, "out") else None
        worker_ref = ray.put(worker)
        threads = self.torch_threads
        if threads is None and self.gpus_per_worker == 0 and "torch" in sys.modules:
            threads = sys.modules["torch"].get_num_threads()
        runner = self._actor_class()
        results: dict[int, WrittenFile] = {}
        failures: dict[int, int] = {}
        queue = deque(range(len(tasks)))
        idle: list = []
        running: dict = {}  # object ref -> ("ready", actor) | ("task", actor, position)

        def start_actor():
            actor = runner.remote(worker_ref, threads)
            actors.append(actor)
            running[actor.ready.remote()] = ("ready", actor)

        n_workers = self._n_workers(len(tasks))
        for _ in range(n_workers):
            start_actor()
        start_failures = 0
        while len(results) < len(tasks):
            while queue and idle:
                actor, position = idle.pop(), queue.popleft()
                running[actor.run.remote(tasks[position])] = ("task", actor, position)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            kind, actor, *rest = running.pop(ref)
            try:
                payload = ray.get(ref)
                failure, actor_lives = None, True
            except RayTaskError as error:  # the call raised; the actor lives on
                failure, actor_lives = getattr(error, "cause", None) or error, kind == "task"
            except RayError as error:  # the actor died (OOM, node lost, a failing constructor, ...)
                failure, actor_lives = error, False
            if kind == "task":
                if failure is None:
                    results[rest[0]] = self._land(tasks[rest[0]], payload, root)
                    progress(tasks[rest[0]])
                else:
                    fatal = actor_lives and isinstance(failure, AtlasError)
                    self._failed(tasks[rest[0]], failure, failures, queue, rest[0], fatal=fatal)
            if actor_lives:
                idle.append(actor)
                continue
            actors.remove(actor)
            ray.kill(actor, no_restart=True)
            if kind == "ready":
                start_failures += 1
                if start_failures > n_workers + self.max_retries:
                    raise ShardFailedError(
                        f"Ray workers keep failing to start ({start_failures} times); last error: "
                        f"{type(failure).__name__}: {failure}"
                    )
            start_actor()
        return [results[i] for i in range(len(tasks))]

    def _failed(
        self, task: ShardTask, error, failures: dict, queue: deque, position: int, fatal: bool
    ) -> None:
        failures[position] = failures.get(position, 0) + 1
        what = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        if fatal or failures[position] > self.max_retries:
            tried = "" if fatal else f" after {failures[position]} attempts"
            raise ShardFailedError(
                f"shard {task.index} of {task.config} ({task.n_texts} texts) failed{tried}: {what}. Finished "
                "shards are kept: rerun the same command to resume"
            ) from (error if isinstance(error, BaseException) else None)
        log.warning("shard %d of %s failed (%s); retrying", task.index, task.config, what)
        queue.appendleft(position)

    @staticmethod
    def _land(task: ShardTask, payload: tuple, root: Path | None) -> WrittenFile:
        """A worker's result -> the shard file under the atlas (written here when sent as bytes), marked done."""
        if payload[0] == "written":
            return payload[1]
        from atlas_build.atlas.layout import AtlasLayout
        from atlas_build.atlas.shards import mark_shard_done
        from atlas_build.atlas.writer import crash_point

        _, rel, data, sha256, rows = payload
        layout = AtlasLayout(root)
        path = layout.shard_path(task.config, task.index, task.part)
        if layout.relative(path) != rel:
            raise ShardFailedError(f"shard {task.index} of {task.config} came back as {rel}, not {path}")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ShardFailedError(f"shard {task.index} of {task.config} was corrupted on its way back")
        # The write protocol of `build.ShardWorker`, here in the driver: shard, then its done-marker.
        write_bytes_atomic(path, data)
        from atlas_build.atlas.rows import METHOD, file_fingerprints

        # The marker carries the rows' fingerprint as a local build's does (exact reads check it).
        fingerprint = {"method": METHOD, "columns": file_fingerprints(path)}
        written = WrittenFile(
            path=path, sha256=sha256, rows=rows, bytes=len(data), rows_fingerprint=fingerprint
        )
        crash_point("marker-before-write")
        try:
            mark_shard_done(layout, task.config, task.index, written, task.inputs_sha256, task.part)
        except BaseException:
            path.unlink(missing_ok=True)  # unmarked, it would be redone anyway
            raise
        crash_point("marker-written")
        return written


__all__ = ["RayExecutor", "RayMissingError", "RayOptionsError", "ShardFailedError", "ShardRunner"]
