"""Kill a build with SIGKILL at fixed points of its write protocol, resume it, get the same atlas.

Each killed build is a real subprocess (the `_support.py` driver: `atlas build` with the fake engine) that
`ROUTING_ATLAS_TEST_KILL_AT` stops at an exact step; a SIGKILL runs no cleanup, like a preempted node.
"""

from __future__ import annotations

import re
import shutil
import signal

import pyarrow.parquet as pq
import pytest

from atlas_build.atlas.manifest import Manifest
from validation.integrity import UNEXPECTED, verify_files

from ._support import FAKE_ARGS, FAKE_ROUTING, assert_same_atlas, done_shards
from .conftest import KILL_POINTS, cli

ROUTING_REAL = "routing-tiny-deepseek-v3"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_build_resumes_to_the_uninterrupted_atlas(point, killed_builds, fake_reference, fakes):
    killed = killed_builds[point]
    out = killed.out
    assert killed.returncode == -signal.SIGKILL, f"not killed at {point}:\n{killed.log}"
    # Killed anywhere, the manifest on disk never lists a file that is missing or altered: what is not
    # finished is only "unexpected" (not published, redone or removed by the resume).
    if (out / "manifest.json").exists():
        assert {p.kind for p in verify_files(out)} <= {UNEXPECTED}
    done = done_shards(out, fake_reference)
    inodes = {rel: (out / rel).stat().st_ino for rel in done}

    result = cli(["build", "--out", str(out), *FAKE_ARGS])

    assert result.exit_code == 0, result.output
    assert f"{10 - len(done)} shards written, {len(done)} resumed" in result.output
    # Complete shards are skipped (the very same file), the others redone.
    assert {rel: (out / rel).stat().st_ino for rel in done} == inodes
    assert_same_atlas(out, fake_reference)
    # The record as well as the data: one record of the build, every run's work summed, the resume named.
    records = _routing_records(out)
    (expected,) = _routing_records(fake_reference)
    assert len(records) == 1, records
    stats = records[0]["stats"]
    assert stats["tokens_routed"] == expected["stats"]["tokens_routed"] > 0
    after_save = point in ("manifest-saved:1", "build-done:1")  # the record was saved by the killed run
    routed_before_kill = KILL_POINTS.index(point) >= KILL_POINTS.index("shard-before-write:4")
    assert stats["runs"] == (2 if routed_before_kill and not after_save else 1)
    assert len(stats["resumes"]) == stats["runs"] - 1
    if stats["resumes"]:
        assert stats["resumes"][0]["shards_kept"] == len(done)
        assert stats["tokens_routed_last_run"] < stats["tokens_routed"] or not done
    assert not (out / ".atlas" / "runs").exists()


def _routing_records(root):
    return [b for b in Manifest.load(root).builds if b.get("kind") == "routing"]


def test_a_resumed_build_killed_again_still_converges(killed_builds, fake_reference, fakes):
    killed = killed_builds["chain"]  # killed mid-write of shard 2, then its resume after 3 more shards
    out = killed.out
    assert killed.returncode == -signal.SIGKILL, killed.log
    assert len(done_shards(out, fake_reference)) == 2 + 3
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert result.exit_code == 0, result.output
    assert "5 shards written, 5 resumed" in result.output
    assert "resuming the interrupted build (pid" in result.output
    assert_same_atlas(out, fake_reference)
    # Three runs, all summed (the 297 of 2,249: only the last run's tokens were counted).
    (record,) = _routing_records(out)
    (expected,) = _routing_records(fake_reference)
    assert record["stats"]["runs"] == 3 and [r["shards_kept"] for r in record["stats"]["resumes"]] == [2, 5]
    assert record["stats"]["tokens_routed"] == expected["stats"]["tokens_routed"]
    assert record["stats"]["tokens_routed_last_run"] < record["stats"]["tokens_routed"]


def test_a_rerun_of_a_finished_build_adds_no_record(fake_reference, tmp_path, fakes):
    out = tmp_path / "atlas"
    shutil.copytree(fake_reference, out)
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert result.exit_code == 0 and "0 shards written, 10 resumed" in result.output
    assert _routing_records(out) == _routing_records(fake_reference)


def test_verify_flags_an_interrupted_build_until_it_is_resumed(killed_builds, fakes):
    out = killed_builds["verify"].out
    result = cli(["verify", str(out)])
    assert result.exit_code == 1
    assert re.search(rf"unexpected\s+{FAKE_ROUTING}/{FAKE_ROUTING}-00000.parquet", result.output)
    assert re.search(r"unexpected\s+models/models-00000.parquet", result.output)
    assert cli(["build", "--out", str(out), *FAKE_ARGS]).exit_code == 0
    assert cli(["verify", str(out)]).exit_code == 0


def test_resume_with_another_weights_dtype_redoes_the_finished_shards(killed_builds, fakes):
    """Shards of another storage dtype are not reused: a config never mixes two runs."""
    out = killed_builds["weights-dtype"].out
    assert killed_builds["weights-dtype"].returncode == -signal.SIGKILL
    result = cli(["build", "--out", str(out), *FAKE_ARGS, "--weights-dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "10 shards written, 0 resumed" in result.output
    manifest = Manifest.load(out)
    for rel in manifest.config_files(FAKE_ROUTING):
        assert str(pq.read_schema(out / rel).field("weights").type.value_type.value_type) == "float"


def test_resumed_atlas_loads_with_datasets(killed_builds, fake_reference, fakes):
    """What a user loads after a crash and a resume: every token once, as in the uninterrupted atlas."""
    import datasets

    out = killed_builds["datasets"].out
    assert cli(["build", "--out", str(out), *FAKE_ARGS]).exit_code == 0
    resumed = datasets.load_dataset(str(out), FAKE_ROUTING, split="train")
    reference = datasets.load_dataset(str(fake_reference), FAKE_ROUTING, split="train")
    keys = list(zip(resumed["source_id"], resumed["token_index"], strict=True))
    assert len(keys) == len(set(keys)) == len(reference)
    assert sorted(keys) == sorted(zip(reference["source_id"], reference["token_index"], strict=True))


def test_real_cli_build_killed_mid_routing_resumes(real_cli_resumed, real_reference):
    """The real `atlas build` (subprocess, real tiny-deepseek-v3), killed after its second shard."""
    out, killed, resumed = real_cli_resumed
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "resuming the interrupted build" in resumed
    assert re.search(r"3 shards written, 2 resumed", resumed), resumed
    assert_same_atlas(out, real_reference, routing=ROUTING_REAL)
