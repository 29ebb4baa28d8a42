"""One writer at a time: an exclusive lock file in the atlas's state folder.

The lock holds the owner's pid and host. A lock whose process is gone (a killed build) is stale and is
taken over; a live one makes the second build refuse with a clear message.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.errors import LockError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtlasLock:
    def __init__(self, root: Path):
        self.path = AtlasLayout(root).state_dir / "lock"
        self.stale_recovered = False

    def acquire(self) -> AtlasLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner.get("host") == socket.gethostname() and _alive(int(owner.get("pid", -1))):
                    raise LockError(
                        f"{self.path.parent.parent} is being written by another build (pid {owner['pid']}); "
                        "wait for it to finish, or build into another directory"
                    ) from None
                if owner and owner.get("host") != socket.gethostname():
                    raise LockError(
                        f"{self.path.parent.parent} is locked by a build on host {owner.get('host')!r} "
                        f"(pid {owner.get('pid')}); if that build is dead, remove {self.path}"
                    ) from None
                # The owner died without releasing (SIGKILL, power loss): recover the stale lock.
                self.path.unlink(missing_ok=True)
                self.stale_recovered = True
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
            return self
        raise LockError(f"could not take the lock {self.path}")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # half-written by a killed process: treat as stale

    def release(self) -> None:
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> AtlasLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
