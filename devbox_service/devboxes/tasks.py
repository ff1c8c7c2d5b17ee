"""The background task each devbox may have (a boot, a reboot, work a restart cut short),
kept by `DevboxCore` so a deletion can cancel it and shutdown can end them all."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Coroutine, Sequence
from typing import Any


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def run(self, devbox_ids: Sequence[str], work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as the devboxes' background task (cancelled if one is deleted)."""
        task = asyncio.create_task(work)
        for devbox_id in devbox_ids:
            self._tasks[devbox_id] = task
            task.add_done_callback(functools.partial(self._forget, devbox_id))

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def _forget(self, devbox_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(devbox_id) is task:
            del self._tasks[devbox_id]

    async def cancel(self, devbox_id: str) -> None:
        task = self._tasks.pop(devbox_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        tasks = {t for t in self._tasks.values() if not t.done()}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
