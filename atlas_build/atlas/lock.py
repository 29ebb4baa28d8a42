"""One writer at a time: an exclusive `flock` on the atlas's lock file.

The kernel holds the lock for the open file and drops it when the process exits in any way (SIGKILL,
OOM, a preempted node), so a killed build never leaves a lock that blocks the next one: there is no
stale lock to detect, and no takeover for two recovering builds to race on. The file also records the
holder's pid, host and start time, for the message a second build gets. On network file systems the lock
is only as good as the server's locking (Linux NFS maps `flock` to byte-range locks, which work).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from atlas_build.atlas.layout import AtlasLayout
from atlas_build.errors import LockError


class AtlasLock:
    """Exclusive, non-blocking lock on an atlas directory (`DIR/.atlas/lock`); a context manager.

    Attributes:
        stale_recovered: set by `acquire` when the file named an earlier holder that never released it
            (a killed build); that build is dead, because its lock was free.
        previous_owner: that holder's record (pid, host, started), else None.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = AtlasLayout(root).state_dir / "lock"
        self.stale_recovered = False
        self.previous_owner: dict | None = None
        self._fd: int | None = None
        self._made_state_dir = False

    def acquire(self) -> AtlasLock:
        """Take the lock or raise `LockError` (busy, or a state folder/lock file that is a symbolic link).

        The lock file is opened relative to the state folder's own descriptor, without following symbolic
        links at either level: a planted `.atlas -> elsewhere` or `.atlas/lock -> ~/.bashrc` is refused,
        never written through.
        """
        state = self.path.parent
        self._made_state_dir = not os.path.lexists(state)
        while True:
            try:
                state.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                pass  # a symbolic link to nowhere, or a file: refused below
            except OSError as error:
                raise LockError(f"cannot create {state}: {error.strerror or error}") from error
            dir_fd = self._open_state_dir(state)
            if dir_fd is None:
                continue  # a refused build removed the (empty) state folder it had made: make it again
            try:
                fd = os.open(
                    self.path.name,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except FileNotFoundError:
                os.close(dir_fd)
                continue
            except OSError as error:
                os.close(dir_fd)
                if error.errno == errno.ELOOP:
                    raise LockError(
                        f"{self.path} is a symbolic link: the lock lives inside the atlas only; remove the "
                        "link and run the build again"
                    ) from None
                raise LockError(
                    f"cannot open the lock file {self.path}: {error.strerror or error}"
                ) from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                owner = _read(fd)
                os.close(fd)
                os.close(dir_fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockError(f"cannot lock {self.path}: {error.strerror or error}") from error
                raise LockError(self._busy_message(owner)) from None
            # A holder that released between our open and our flock unlinked the file first (or removed
            # the state folder it had made): we would hold an orphan inode that the next build never sees.
            # Only the file at the path counts.
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            os.close(dir_fd)
            if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                os.close(fd)
                continue
            break
        self.previous_owner = _read(fd)
        self.stale_recovered = self.previous_owner is not None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": int(time.time())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError:
            pass  # the record only feeds messages; a full disk must not stop us from holding the lock
        self._fd = fd
        return self

    def _open_state_dir(self, state: Path) -> int | None:
        """A descriptor of the real state folder inside the atlas; None when it vanished meanwhile."""
        try:
            return os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LockError(
                    f"{state} is {'a symbolic link' if state.is_symlink() else 'not a folder'}: a build keeps "
                    "its state inside the atlas only; remove it or build into another folder"
                ) from None
            raise LockError(f"cannot open {state}: {error.strerror or error}") from error

    def _busy_message(self, owner: dict | None) -> str:
        if owner:
            who = f"pid {owner.get('pid')} on host {owner.get('host')!r}"
            if owner.get("started"):
                who += f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['started']))}"
        else:
            who = "pid unknown"
        return (
            f"{self.root} is being written by another build ({who}); wait for it to finish, or build into "
            "another directory. The lock is released when that process exits, even if it is killed"
        )

    def owner(self) -> dict | None:
        """The record of the current (or last) holder, or None."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding: a build that opened the file meanwhile sees the inode change and
        # starts again on a fresh file.
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._made_state_dir:
            # A build that made the state folder leaves no trace of it; rmdir, never a recursive removal:
            # it fails, leaving everything, when another build has put anything in there meanwhile.
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> AtlasLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
