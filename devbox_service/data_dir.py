"""The data directory's owner: one process at a time serves it or works on it offline.

`serve` holds an exclusive lock on `run/service.lock` while it runs; the offline commands
that change what a running service owns (`stop-vms`, `restore`) take the same lock, so they
refuse to run beside it instead of fighting it over the same VMs and database. The lock is
the kernel's (flock): a killed process releases it, and no stale file can block a start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from devbox_service.errors import Conflict

LOCK_FILE = Path("run") / "service.lock"

PRIVATE_DIRS = (".", "run", "ssh", "vms")
"""Directories of the data dir that nobody but the service's user may enter (0700)."""
UMASK = 0o077
"""Everything the service creates is its user's alone (0600 files, 0700 directories) unless
it says otherwise: QEMU, if it runs as another user, is handed what it needs open."""


def secure(data_dir: Path) -> None:
    """Close the data dir to everyone but the service's user, whatever modes it had.

    Run at every start: a data dir made by an older version (or restored, or copied) may be
    0755 with a 0644 database. The data dir and its own subdirectories become 0700; every file
    at its top (the SQLite database with its -wal and -shm, the secret-box key, the admin key,
    the lock) and in `ssh/` (the gateway's host key) becomes 0600. Also sets the umask, so what
    is created from now on starts that way. The VM state under `vms/` is the backend's: its
    directory is closed, so what lies below is unreachable to others whatever its mode.
    """
    os.umask(UMASK)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in PRIVATE_DIRS:
        d = data_dir / name
        if d.is_dir() and not d.is_symlink():
            os.chmod(d, 0o700)
    for d in (data_dir, data_dir / "ssh"):
        if not d.is_dir():
            continue
        for entry in os.scandir(d):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o600)


class DataDirLock:
    """An exclusive hold on a data directory; `release()` (or the process ending) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path, purpose: str) -> DataDirLock:
        """Raises Conflict naming the process that holds the directory."""
        path = data_dir / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Conflict(
                f"{data_dir} is in use by {holder}: stop it first (Ctrl-C, or SIGTERM)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"devbox-service {purpose} (pid {os.getpid()})\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


@contextlib.contextmanager
def held(data_dir: Path, purpose: str) -> Iterator[DataDirLock]:
    lock = DataDirLock.acquire(data_dir, purpose)
    try:
        yield lock
    finally:
        lock.release()
