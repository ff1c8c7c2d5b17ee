"""A run's build events: stored before they are announced, so a client that connects late,
reconnects, or comes back after a restart of the service replays the whole history first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from devbox_service.devbox_templates.store import TemplateStore

TERMINAL = frozenset({"completed", "cancelled", "error", "step_failed"})
"""After one of these a run sends nothing more (clients stop reading at them)."""

RECHECK_SECONDS = 5.0


class RunEvents:
    def __init__(self, store: TemplateStore) -> None:
        self._store = store
        self._last_seq: dict[str, int] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    def _wakeup(self, run_id: str) -> asyncio.Event:
        """Set (and replaced) at the next event: a follower takes it before reading, so an
        event stored while it reads still wakes it."""
        return self._wakeups.setdefault(run_id, asyncio.Event())

    async def emit(self, run_id: str, type_: str, **fields: Any) -> None:
        """Store one event (`{"type": ..., **fields}`) and wake the run's followers."""
        async with self._lock:
            seq = self._last_seq.get(run_id)
            if seq is None:
                stored = await self._store.events(run_id)
                seq = stored[-1][0] if stored else 0
            seq += 1
            await self._store.append_event(run_id, seq, {"type": type_, **fields})
            self._last_seq[run_id] = seq
        self._wakeups.pop(run_id, asyncio.Event()).set()
        if type_ in TERMINAL:
            self._last_seq.pop(run_id, None)

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        return [payload for _, payload in await self._store.events(run_id)]

    async def follow(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every event of the run from the first, then live ones until a terminal event (or,
        for a run that ended without one, until nothing more can come)."""
        seen = 0
        while True:
            wakeup = self._wakeup(run_id)
            for seq, payload in await self._store.events(run_id, after=seen):
                seen = seq
                yield payload
                if payload.get("type") in TERMINAL:
                    return
            run = await self._store.run(run_id)
            if run is None or not run.status.active:
                if not await self._store.events(run_id, after=seen):
                    return
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), RECHECK_SECONDS)
