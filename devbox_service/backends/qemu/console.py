"""Bounded guest consoles. QEMU appends a guest's serial output to a file with no limit, and a
guest (root, maybe hostile) can write without end; a watcher cuts each file back to its last
`keep` bytes once it passes `limit`. QEMU opened the file with O_APPEND, so after the cut its
writes land at the new end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("devbox_service.qemu")

CONSOLE_LIMIT = 1024 * 1024
CONSOLE_KEEP = 64 * 1024
WATCH_INTERVAL = 2.0


def cap(path: Path, *, limit: int = CONSOLE_LIMIT, keep: int = CONSOLE_KEEP) -> bool:
    """Cut the file back to its last `keep` bytes if it is over `limit`; True if it was."""
    try:
        if path.stat().st_size <= limit:
            return False
        with path.open("r+b") as handle:
            handle.seek(-keep, 2)
            last = handle.read()
            handle.seek(0)
            handle.truncate()
            handle.write(b"[earlier console output cut]\n" + last)
    except OSError:
        return False
    return True


async def watch(consoles: Callable[[], Iterable[Path]], interval: float = WATCH_INTERVAL) -> None:
    """Cap every console `consoles()` names, every `interval` seconds, until cancelled."""
    while True:
        for path in list(consoles()):
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(cap, path):
                    log.info("console cut back", extra={"console": str(path)})
        await asyncio.sleep(interval)
