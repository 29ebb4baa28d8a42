"""A full disk stops the build cleanly: a clear message, no temporary file, no partial shard, the manifest
as it was; freeing space and rerunning the same command finishes the atlas.

For real on a small tmpfs when this process may mount one (root), and always at the writer boundary.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

import atlas_build.atlas.writer as writer

from ._support import FAKE_ARGS, FAKE_ROUTING, assert_same_atlas, done_shards, snapshot, temp_files
from .conftest import cli, copy_of

ENOSPC_MESSAGE = "Error writing bytes to file. Detail: [errno 28] No space left on device"


def assert_stopped_cleanly(result, out, before: dict[str, str], reference, names: str) -> set[str]:
    """Exit 2 with the full-disk message naming the file; the atlas as before the failed shard began."""
    assert result.exit_code == 2, result.output
    assert "disk is full" in result.output and "rerun the same command to resume" in result.output
    assert names in result.output
    assert "Traceback" not in result.output
    assert temp_files(out) == []
    now = snapshot(out)
    assert now["manifest.json"] == before["manifest.json"]
    assert {rel: now.get(rel) for rel in before} == before  # nothing that was there changed
    # Whatever is new is finished shards, each with its marker: no partial and no unmarked shard.
    done = done_shards(out, reference)
    added = {rel for rel in now if rel not in before and not rel.startswith(".atlas/")}
    assert added == done
    markers = {rel for rel in now if rel.startswith(f".atlas/shards/{FAKE_ROUTING}/")}
    assert len(markers) == len(done)
    return done


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the writer-boundary tests cover a full disk")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk_stops_the_build_cleanly_and_it_resumes(tmpfs, corpus_seed, fake_reference, fakes):
    out = copy_of(corpus_seed, tmpfs / "atlas")
    before = snapshot(out)
    stat = os.statvfs(tmpfs)
    filler = tmpfs / "filler"
    # Room for a few shards (a file takes at least a 4 KiB page), not for ten.
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 40 * 1024))

    result = cli(["build", "--out", str(out), *FAKE_ARGS])

    assert_stopped_cleanly(result, out, before, fake_reference, names=str(out))
    filler.unlink()  # free space, rerun the same command
    again = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert again.exit_code == 0, again.output
    assert_same_atlas(out, fake_reference)


def test_a_shard_write_failing_with_enospc(tmp_path, monkeypatch, corpus_seed, fake_reference, fakes):
    out = copy_of(corpus_seed, tmp_path / "atlas")
    before = snapshot(out)
    real_write_table = writer.pq.write_table
    calls = []

    def write_table(table, where, **options):
        calls.append(where)
        real_write_table(table, where, **options)
        if len(calls) == 3:  # the third shard: half its bytes reach the disk, then the disk is full
            os.truncate(where, os.path.getsize(where) // 2)
            raise OSError(errno.ENOSPC, ENOSPC_MESSAGE)

    monkeypatch.setattr(writer.pq, "write_table", write_table)
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    done = assert_stopped_cleanly(result, out, before, fake_reference, names=f"{FAKE_ROUTING}-00002.parquet")
    assert len(done) == 2

    monkeypatch.setattr(writer.pq, "write_table", real_write_table)  # space is back
    again = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert again.exit_code == 0, again.output
    assert "8 shards written, 2 resumed" in again.output
    assert_same_atlas(out, fake_reference)


def fail_replace_of(monkeypatch, name: str, nth: int = 1):
    """Make the `nth` rename onto a file called `name` fail with ENOSPC (as a full disk does); return the
    real `os.replace`."""
    real_replace, seen = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            seen.append(dst)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return real_replace


def test_a_marker_write_failing_leaves_no_unmarked_shard(
    tmp_path, monkeypatch, corpus_seed, fake_reference, fakes
):
    out = copy_of(corpus_seed, tmp_path / "atlas")
    before = snapshot(out)
    fail_replace_of(monkeypatch, "00003.json")
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    done = assert_stopped_cleanly(result, out, before, fake_reference, names="00003.json")
    assert len(done) == 3 and not (out / FAKE_ROUTING / f"{FAKE_ROUTING}-00003.parquet").exists()


def test_a_manifest_save_failing_keeps_the_previous_manifest(
    tmp_path, monkeypatch, corpus_seed, fake_reference, fakes
):
    out = copy_of(corpus_seed, tmp_path / "atlas")
    before = snapshot(out)
    real_replace = fail_replace_of(monkeypatch, "manifest.json")
    result = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert result.exit_code == 2 and "manifest.json" in result.output and "disk is full" in result.output
    assert temp_files(out) == []
    assert snapshot(out)["manifest.json"] == before["manifest.json"]
    monkeypatch.setattr(os, "replace", real_replace)
    again = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert again.exit_code == 0 and "0 shards written, 10 resumed" in again.output
    assert_same_atlas(out, fake_reference)
