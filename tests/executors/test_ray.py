"""The Ray executor on a local Ray (2 CPUs, no dashboard): the same atlas as the local executor, retries.

Ray starts once for the module (~15 s on 2 cores); every build here routes a few WordNet lemmas with the
hf engine and the built-in (RANDOM-INIT) model, in shards of a few texts so that there are several.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from atlas_build.atlas.manifest import Manifest
from atlas_build.builder import BuildConfig, ShardWorker, run_build
from atlas_build.errors import AtlasError

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: `pip install -c constraints/cpu.txt 'ray>=2.40'`"
)

from atlas_build.executors.ray import (  # noqa: E402 - after the importorskip
    RayExecutor,
    RayMissingError,
    RayOptionsError,
    ShardFailedError,
)

MAX_LEMMAS = 4
TEXTS_PER_SHARD = 12
ROUTING = "routing-tiny-deepseek-v3"


@pytest.fixture(scope="module")
def ray_cluster():
    # Test workers are shipped by value: Ray's workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def build(out: Path, executor: str = "local", **executor_options):
    return run_build(
        BuildConfig(
            model="tiny-deepseek-v3",
            out=out,
            max_lemmas=MAX_LEMMAS,
            texts_per_shard=TEXTS_PER_SHARD,
            executor=executor,
            executor_options=executor_options,
            progress=False,
        ),
        log=lambda *_: None,
    )


@pytest.fixture(scope="module")
def local_atlas(tmp_path_factory, requires_wordnet) -> Path:
    out = tmp_path_factory.mktemp("local") / "atlas"
    build(out)
    assert len(Manifest.load(out).config_files(ROUTING)) >= 3, "the test needs several shards"
    return out


def corpora_only(local_atlas: Path, out: Path) -> Path:
    """A copy of the local atlas without its routing shards: the next build routes everything again."""
    shutil.copytree(local_atlas, out)
    shutil.rmtree(out / ROUTING)
    shutil.rmtree(out / ".atlas" / "shards")
    return out


class FlakyShardWorker(ShardWorker):
    """Fails the first attempt at shard 1 (a flag file remembers it across processes), then works."""

    flag: Path | None = None

    def __call__(self, task):
        if task.index == 1 and not self.flag.exists():
            self.flag.write_text("failed once\n")
            raise RuntimeError("injected failure of shard 1")
        return super().__call__(task)


class BrokenShardWorker(ShardWorker):
    """Shard 0 fails on every attempt (before loading any model)."""

    def __call__(self, task):
        if task.index == 0:
            raise RuntimeError("shard 0 is broken")
        return super().__call__(task)


def test_ray_build_with_a_retried_shard_has_the_local_builds_data_hashes(
    ray_cluster, local_atlas, tmp_path, monkeypatch
):
    out = corpora_only(local_atlas, tmp_path / "atlas")
    flag = tmp_path / "failed-once"
    monkeypatch.setattr(FlakyShardWorker, "flag", flag)
    monkeypatch.setattr("atlas_build.builder.steps.ShardWorker", FlakyShardWorker)
    stats = build(out, "ray", workers=2, max_retries=1)
    assert flag.exists(), "the injected failure never happened"
    assert stats.shards_written == len(Manifest.load(local_atlas).config_files(ROUTING))
    assert Manifest.load(out).data_hashes() == Manifest.load(local_atlas).data_hashes()
    # The driver marked every landed shard done, as the local build does: a rerun resumes from them.
    markers = sorted((local_atlas / ".atlas" / "shards" / ROUTING).glob("*.json"))
    assert len(markers) == stats.shards_written
    for marker in markers:
        assert json.loads((out / marker.relative_to(local_atlas)).read_text()) == json.loads(
            marker.read_text()
        )


def test_a_shard_that_keeps_failing_is_named(ray_cluster, local_atlas, tmp_path, monkeypatch):
    out = corpora_only(local_atlas, tmp_path / "atlas")
    monkeypatch.setattr("atlas_build.builder.steps.ShardWorker", BrokenShardWorker)
    with pytest.raises(
        ShardFailedError, match=rf"shard 0 of {ROUTING} .* after 2 attempts: RuntimeError: shard 0"
    ):
        build(out, "ray", workers=1, max_retries=1)
    assert issubclass(ShardFailedError, AtlasError)  # the CLI prints it and exits 2


@dataclasses.dataclass
class UnstartableConfig:
    """A worker config that cannot be pointed at a worker's scratch folder: the actor dies at start."""

    out: Path

    def __post_init__(self):
        if "atlas-shard-" in str(self.out):
            raise RuntimeError("this worker cannot start")


class UnstartableWorker:
    def __init__(self, out: Path):
        self.config = UnstartableConfig(out)

    def __call__(self, task):
        raise AssertionError("never reached")


def test_workers_that_cannot_start_fail_the_build_instead_of_looping(ray_cluster, tmp_path):
    from atlas_build.executors.base import ShardTask

    executor = RayExecutor(workers=1, max_retries=0)
    with pytest.raises(ShardFailedError, match="Ray workers keep failing to start"):
        executor.run(
            [ShardTask(ROUTING, 0, (), "")], lambda: UnstartableWorker(tmp_path), progress=lambda task: None
        )


def test_more_gpus_per_worker_than_the_cluster_has_is_refused(ray_cluster):
    from atlas_build.executors.base import ShardTask

    executor = RayExecutor(gpus_per_worker=1)
    with pytest.raises(RayOptionsError, match="asks for 1 GPUs but the cluster has 0"):
        executor.run([ShardTask("routing-x", 0, (), "")], lambda: print, progress=lambda task: None)


def test_missing_ray_fails_at_construction_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayMissingError, match=r"pip install -c constraints/cpu.txt 'ray>=2.40'"):
        RayExecutor()


def test_ray_options_need_the_ray_executor(tmp_path):
    from click.testing import CliRunner

    from atlas_build.cli import main

    result = CliRunner().invoke(
        main, ["build", "--model", "tiny-deepseek-v3", "--out", str(tmp_path / "a"), "--shards", "2"]
    )
    assert result.exit_code == 2 and "options of --executor ray" in result.output
    result = CliRunner().invoke(
        main,
        ["build", "--model", "tiny-deepseek-v3", "--out", str(tmp_path / "a"), "--tensor-parallel-size", "8"],
    )
    assert result.exit_code == 2 and "option of --engine vllm" in result.output
    assert not (tmp_path / "a").exists()
