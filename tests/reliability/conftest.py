"""Fixtures of the reliability tests: reference builds (fake and real engine), a corpus-only seed atlas,
builds killed at fixed points of the write protocol (real processes, SIGKILL)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ._support import FAKE_ARGS, REPO, driver_env, install_fakes, run_driver_jobs

# `pytest` (unlike `python -m pytest`) leaves the repository root off sys.path, and tests/ is on it: then
# `import validation` finds tests/validation, a namespace package, instead of the `validation` package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("validation"), "__file__", "") is None:
    del sys.modules["validation"]

# Crash points of the kill-and-resume tests: `<event>:<n>` of `atlas_build.atlas.writer.crash_point`.
# With the fixed corpus: parquet writes are senses, sense-pairs, substitutions, shards 0-9, models; text
# writes are the manifest and the card (README.md, LICENSE.md) after the corpora, then one marker per shard.
KILL_POINTS = [
    "corpus-before-write:1",  # the corpus is built, nothing written yet
    "parquet-temp-written:1",  # mid-write of the first corpus file (its temporary file exists)
    "parquet-renamed:2",  # two of the three corpus files in place, no manifest
    "corpus-written:1",  # every corpus file, no manifest
    "text-temp-written:1",  # mid-write of the first manifest
    "corpus-saved:1",  # manifest of the corpora saved, card not written
    "shard-before-write:4",  # three shards done
    "parquet-temp-written:6",  # mid-write of shard 2
    "marker-before-write:5",  # shard 4 renamed into place, its marker not written
    "text-temp-written:6",  # mid-write of a shard marker
    "marker-written:7",  # seven shards done
    "routing-done:1",  # every shard done, models and manifest not written
    "models-written:1",  # models written, manifest not saved
    "manifest-saved:1",  # final manifest saved, card not written
    "build-done:1",  # everything written, lock not released
]


def cli(args: list[str]):
    """`atlas ARGS` in this process."""
    from atlas_build.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture
def fakes(monkeypatch):
    """`--engine fake` and the fixed corpus, in this process."""
    install_fakes(monkeypatch.setattr, monkeypatch.setitem)


@pytest.fixture(scope="session")
def fake_reference(tmp_path_factory) -> Path:
    """An uninterrupted fake build (read-only)."""
    out = tmp_path_factory.mktemp("fake-reference") / "atlas"
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp.setattr, mp.setitem)
        result = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def corpus_seed(tmp_path_factory) -> Path:
    """An atlas holding only the fixed corpus, as a build leaves it after its corpus step (read-only)."""
    from atlas_build.atlas.manifest import Manifest
    from atlas_build.builder import BuildConfig, ensure_wordnet_corpora
    from dataset_cards.render import write_card

    out = tmp_path_factory.mktemp("corpus-seed") / "atlas"
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp.setattr, mp.setitem)
        manifest = Manifest()
        assert ensure_wordnet_corpora(BuildConfig(model="x", out=out, max_lemmas=2), manifest)
    manifest.save(out)
    write_card(out)
    return out


def copy_of(atlas: Path, dest: Path) -> Path:
    shutil.copytree(atlas, dest)
    return dest


@dataclass
class Killed:
    """A build stopped by the crash-test driver: its atlas directory, exit code (-9: SIGKILL) and output."""

    out: Path
    returncode: int
    log: str


# Extra killed builds, each for one test: name -> the kill points of successive runs into one directory.
EXTRA_CASES = {
    "chain": ["parquet-temp-written:6", "marker-written:3"],  # killed, then its resume killed too
    "verify": ["models-written:1"],
    "datasets": ["marker-before-write:5"],
    "weights-dtype": ["marker-written:3"],
}


@pytest.fixture(scope="session")
def killed_builds(tmp_path_factory) -> dict[str, Killed]:
    """Fake builds killed with SIGKILL at each of KILL_POINTS (and EXTRA_CASES), in forked children of one
    driver process (one interpreter start-up for all)."""
    base = tmp_path_factory.mktemp("killed")
    cases = {point: [point] for point in KILL_POINTS} | EXTRA_CASES
    jobs, dirs = [], {}
    for name, points in cases.items():
        dirs[name] = base / name.replace(":", "-")
        for i, point in enumerate(points):
            log = base / f"{name.replace(':', '-')}.{i}.log"
            jobs.append({"name": name, "kill_at": point, "log": str(log)})
            jobs[-1]["args"] = ["build", "--out", str(dirs[name]), *FAKE_ARGS]
    codes = run_driver_jobs(jobs, base / "jobs.json")
    logs = {name: "".join(Path(j["log"]).read_text() for j in jobs if j["name"] == name) for name in cases}
    return {name: Killed(dirs[name], codes[name], logs[name]) for name in cases}


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from atlas_build.engines.hf import HFEngine

    engine = HFEngine(str(tiny_checkpoint))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def real_reference(tmp_path_factory, corpus_seed, tiny_checkpoint) -> Path:
    """The fixed corpus routed by the real tiny-deepseek-v3 checkpoint, uninterrupted (read-only)."""
    from atlas_build.builder import BuildConfig, run_build

    out = copy_of(corpus_seed, tmp_path_factory.mktemp("real-reference") / "atlas")
    run_build(
        BuildConfig(model=str(tiny_checkpoint), out=out, texts_per_shard=2, progress=False),
        log=lambda *_: None,
    )
    return out


HF_TOKEN = "hf_test_secret_xyz"


@pytest.fixture(scope="session")
def real_cli_resumed(tmp_path_factory, corpus_seed, tiny_checkpoint):
    """`atlas build` with the real model as a subprocess, killed after its second shard, then resumed (in
    this process, to spare a second torch start-up); both with HF_TOKEN set.

    Returns (atlas dir, the killed run's CompletedProcess, the resumed run's output).
    """
    out = copy_of(corpus_seed, tmp_path_factory.mktemp("real-cli") / "atlas")
    args = [
        "build",
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--texts-per-shard",
        "2",
        "--no-progress",
    ]
    token = {"HF_TOKEN": HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": HF_TOKEN}
    killed = subprocess.run(
        [sys.executable, "-m", "atlas_build.cli", *args],
        env=driver_env(ROUTING_ATLAS_TEST_KILL_AT="marker-written:2", **token),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in token.items():
            mp.setenv(key, value)
        resumed = CliRunner().invoke(main_cli(), args, catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    return out, killed, resumed.output


def main_cli():
    from atlas_build.cli import main

    return main
