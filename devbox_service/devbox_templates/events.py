"""A run's build events: stored before they are announced, so a client that connects late,
reconnects, or comes back after a restart of the service replays the whole history first.

Each event is a Struct of one tagged union (`BuildEvent`, tagged on `type`); its fields keep
the names they have on the wire (the contract's camelCase ones included), so what is stored
and sent is exactly `{"type": ..., **fields}` in the order declared here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec

from devbox_service.devbox_templates.store import RUN_EVENTS, TemplateStore

RECHECK_SECONDS = 5.0


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class StartedEvent(_Event, frozen=True, kw_only=True, tag="started"):
    totalSteps: int
    message: str


class BaseSelectedEvent(_Event, frozen=True, kw_only=True, tag="base_selected"):
    """The snapshot the build devbox boots from: the base or the last cached step."""

    snapshotId: str
    message: str


class CacheEvent(_Event, frozen=True, kw_only=True, tag="cache"):
    """A step not run again: its snapshot is in the cache."""

    index: int
    snapshotId: str


class StepStartedEvent(_Event, frozen=True, kw_only=True, tag="step_started"):
    index: int
    stepType: str


class OutputEvent(_Event, frozen=True, kw_only=True, tag="output"):
    """A chunk of a step's output, secrets redacted."""

    index: int
    content: str


class StepCompletedEvent(
    _Event, frozen=True, kw_only=True, omit_defaults=True, tag="step_completed"
):
    """The service fields only for an `exposeHttpService` step (left out otherwise)."""

    index: int
    snapshotId: str
    serviceName: str | None = None
    servicePort: int | None = None
    serviceUrl: str | None = None


class AwaitingInputEvent(_Event, frozen=True, kw_only=True, tag="awaiting_input"):
    """The run waits for a secret (`deadlineAt` in milliseconds since the epoch)."""

    index: int
    secretName: str
    hasSaved: bool
    optional: bool
    defaultAction: Literal["wait", "skip"]
    deadlineAt: int
    countdownSeconds: int
    runId: str


class PostSecretInstanceEvent(_Event, frozen=True, kw_only=True, tag="post_secret_instance"):
    """What became of the secret the run waited for: received, or (optional) skipped."""

    index: int
    message: str


class CompletedEvent(_Event, frozen=True, kw_only=True, tag="completed"):
    """The devbox handed over, as the API shows it at that moment (kept as stored JSON)."""

    instanceId: str
    instance: dict[str, Any]
    http_services: list[dict[str, Any]]
    warnings: list[str]


class StepFailedEvent(_Event, frozen=True, kw_only=True, tag="step_failed"):
    index: int
    message: str


class CancelledEvent(_Event, frozen=True, kw_only=True, tag="cancelled"):
    message: str


class ErrorEvent(_Event, frozen=True, kw_only=True, tag="error"):
    message: str
    details: str | None


BuildEvent = (
    StartedEvent
    | BaseSelectedEvent
    | CacheEvent
    | StepStartedEvent
    | OutputEvent
    | StepCompletedEvent
    | AwaitingInputEvent
    | PostSecretInstanceEvent
    | CompletedEvent
    | StepFailedEvent
    | CancelledEvent
    | ErrorEvent
)


def kind(event: BuildEvent | type[BuildEvent]) -> str:
    """An event's `type` on the wire (its Struct's tag)."""
    cls = event if isinstance(event, type) else type(event)
    return str(cls.__struct_config__.tag)


TERMINAL = frozenset(kind(c) for c in (CompletedEvent, CancelledEvent, ErrorEvent, StepFailedEvent))
"""After one of these a run sends nothing more: the one list, which the build page hands to its
script (clients stop reading at them)."""


def payload(event: BuildEvent) -> dict[str, Any]:
    """The event as it is stored and sent: `{"type": ..., **fields}`."""
    fields: dict[str, Any] = msgspec.to_builtins(event)
    return fields


def decode(stored: dict[str, Any]) -> BuildEvent | None:
    """A stored event as its Struct; None for one this version cannot read (a shape or type
    it does not know): such an event is still streamed as stored, and ends a stream when its
    `type` is terminal, but folds into nothing."""
    try:
        event: BuildEvent = msgspec.convert(stored, BuildEvent)
    except msgspec.ValidationError:
        return None
    return event


class RunEvents:
    def __init__(self, store: TemplateStore) -> None:
        self._store = store
        self._last_seq: dict[str, int] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        store.database.subscribe(RUN_EVENTS, self._woken)

    def _woken(self, run_id: str) -> None:
        """An event was stored, here or by another process (any run, after a reconnect)."""
        if run_id:
            self._wakeups.pop(run_id, asyncio.Event()).set()
        else:
            for wakeup in self._wakeups.values():
                wakeup.set()
            self._wakeups.clear()

    def _wakeup(self, run_id: str) -> asyncio.Event:
        """Set (and replaced) at the next event: a follower takes it before reading, so an
        event stored while it reads still wakes it."""
        return self._wakeups.setdefault(run_id, asyncio.Event())

    async def emit(self, run_id: str, event: BuildEvent, **run_fields: object) -> None:
        """Store one event (with `run_fields` of its run, in one transaction) and wake the
        run's followers."""
        async with self._lock:
            seq = self._last_seq.get(run_id)
            if seq is None:
                stored = await self._store.events(run_id)
                seq = stored[-1][0] if stored else 0
            seq += 1
            await self._store.append_event(run_id, seq, payload(event), **run_fields)
            self._last_seq[run_id] = seq
        if kind(event) in TERMINAL:
            self._last_seq.pop(run_id, None)

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events as stored (and sent): `decode` makes them Structs."""
        return [stored for _, stored in await self._store.events(run_id)]

    async def follow(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every event of the run from the first, as stored, then live ones until a terminal
        event (or, for a run that ended without one, until nothing more can come). Events are
        passed on as stored, so one this version cannot decode still reaches the client."""
        seen = 0
        while True:
            wakeup = self._wakeup(run_id)
            for seq, stored in await self._store.events(run_id, after=seen):
                seen = seq
                yield stored
                if stored.get("type") in TERMINAL:
                    return
            run = await self._store.run(run_id)
            if run is None or not run.status.active:
                if not await self._store.events(run_id, after=seen):
                    return
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), RECHECK_SECONDS)
