"""One writer at a time: a live holder refuses a second build; a killed holder's lock is no obstacle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from atlas_build.atlas.lock import AtlasLock
from atlas_build.errors import LockError

from ._support import FAKE_ARGS, REPO, driver_env, snapshot
from .conftest import cli, copy_of

HOLD = (
    "import sys, time\n"
    "from atlas_build.atlas.lock import AtlasLock\n"
    "AtlasLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path, fake_reference):
    """A copy of the fake atlas, and a live process holding its lock."""
    out = copy_of(fake_reference, tmp_path / "atlas")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=driver_env(), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_build_is_refused_while_one_runs_then_recovers_when_it_is_killed(holder, fakes):
    out, proc = holder
    before = snapshot(out)
    refused = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert refused.exit_code == 4  # refused (atlas_build/errors.py)
    assert f"is being written by another build (pid {proc.pid}" in refused.output
    assert "wait for it to finish" in refused.output
    assert snapshot(out) == before

    proc.send_signal(signal.SIGKILL)  # the holder dies without releasing: its lock file stays
    proc.wait()
    assert (out / ".atlas" / "lock").exists()
    resumed = cli(["build", "--out", str(out), *FAKE_ARGS])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming the interrupted build (pid {proc.pid})" in resumed.output
    assert "0 shards written, 10 resumed" in resumed.output
    assert not (out / ".atlas" / "lock").exists()


def test_the_lock_records_its_holder_and_is_removed_on_release(tmp_path):
    lock = AtlasLock(tmp_path)
    with lock:
        assert lock.held
        owner = lock.owner()
        assert owner["pid"] == os.getpid() and owner["host"] and owner["started"] > 0
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            AtlasLock(tmp_path).acquire()  # another open file: refused even in the same process
    assert not lock.held and not lock.path.exists()
    assert not AtlasLock(tmp_path).acquire().stale_recovered  # released cleanly: nothing to recover


def test_stale_takeover_race_has_exactly_one_winner(tmp_path):
    """A killed build's lock, and eight builds recovering it at once: one wins, seven are refused."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock = AtlasLock(tmp_path)
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(f'{{"pid": {int(dead.stdout)}, "host": "h", "started": 1}}')
    barrier, results = threading.Barrier(8), []

    def contend():
        contender = AtlasLock(tmp_path)
        barrier.wait()
        try:
            contender.acquire()
            results.append(contender)
        except LockError:
            results.append(None)
        barrier.wait()  # every attempt is made while the winner still holds

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r is not None]
    assert len(results) == 8 and len(winners) == 1
    assert winners[0].stale_recovered and winners[0].previous_owner["pid"] == int(dead.stdout)
    winners[0].release()


def test_acquire_release_churn_never_lets_two_writers_in(tmp_path):
    """Holders that release (and unlink the file) while others open it: never two holders at once."""
    inside, overlaps, errors = [0], [], []
    guard = threading.Lock()

    def churn():
        for _ in range(40):
            lock = AtlasLock(tmp_path)
            try:
                lock.acquire()
            except LockError:
                continue
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return
            with guard:
                inside[0] += 1
                if inside[0] > 1:
                    overlaps.append(inside[0])
            time.sleep(0.0005)  # hold a while: a second holder would show up as an overlap
            with guard:
                inside[0] -= 1
            lock.release()

    threads = [threading.Thread(target=churn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and overlaps == []
    assert not (tmp_path / ".atlas" / "lock").exists()
