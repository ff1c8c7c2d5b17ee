"""Build events as typed Structs: each one stored and sent as the JSON the untyped events were
(same keys, order and values), stored ones decoding back, and streams ending at the one
terminal set even for an event this version cannot read."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast, get_args

import pytest

from devbox_service.db import Database
from devbox_service.devbox_templates.events import (
    TERMINAL,
    AwaitingInputEvent,
    BaseSelectedEvent,
    BuildEvent,
    CacheEvent,
    CancelledEvent,
    CompletedEvent,
    ErrorEvent,
    OutputEvent,
    PostSecretInstanceEvent,
    RunEvents,
    StartedEvent,
    StepCompletedEvent,
    StepFailedEvent,
    StepStartedEvent,
    decode,
    kind,
    payload,
)
from devbox_service.devbox_templates.models import RunRecord, RunStatus
from devbox_service.devbox_templates.store import RUN_EVENTS, TemplateStore

INSTANCE = {"id": "devbox_1", "name": "web", "status": "ready", "networking": None}
SERVICE = {"name": "web", "port": 8080, "url": "https://web--devbox_1.example"}

CASES: list[tuple[BuildEvent, dict[str, Any]]] = [
    # each event with the dict `emit(run_id, type_, **fields)` stored for it before
    (
        StartedEvent(totalSteps=3, message="Building web: 3 steps"),
        {"type": "started", "totalSteps": 3, "message": "Building web: 3 steps"},
    ),
    (
        BaseSelectedEvent(snapshotId="snap_1", message="Starting from the base (snap_1)"),
        {
            "type": "base_selected",
            "snapshotId": "snap_1",
            "message": "Starting from the base (snap_1)",
        },
    ),
    (
        CacheEvent(index=0, snapshotId="snap_2"),
        {"type": "cache", "index": 0, "snapshotId": "snap_2"},
    ),
    (
        StepStartedEvent(index=1, stepType="command"),
        {"type": "step_started", "index": 1, "stepType": "command"},
    ),
    (
        OutputEvent(index=1, content="héllo [redacted]\n"),
        {"type": "output", "index": 1, "content": "héllo [redacted]\n"},
    ),
    (
        StepCompletedEvent(index=1, snapshotId="snap_3"),
        {"type": "step_completed", "index": 1, "snapshotId": "snap_3"},
    ),
    (
        StepCompletedEvent(
            index=2,
            snapshotId="snap_4",
            serviceName="web",
            servicePort=8080,
            serviceUrl="https://web--devbox_1.example",
        ),
        {
            "type": "step_completed",
            "index": 2,
            "snapshotId": "snap_4",
            "serviceName": "web",
            "servicePort": 8080,
            "serviceUrl": "https://web--devbox_1.example",
        },
    ),
    (
        AwaitingInputEvent(
            index=2,
            secretName="TOKEN",
            hasSaved=False,
            optional=True,
            defaultAction="skip",
            deadlineAt=1_700_000_000_000,
            countdownSeconds=300,
            runId="run_1",
        ),
        {
            "type": "awaiting_input",
            "index": 2,
            "secretName": "TOKEN",
            "hasSaved": False,
            "optional": True,
            "defaultAction": "skip",
            "deadlineAt": 1_700_000_000_000,
            "countdownSeconds": 300,
            "runId": "run_1",
        },
    ),
    (
        PostSecretInstanceEvent(index=2, message="secret TOKEN received; resuming"),
        {"type": "post_secret_instance", "index": 2, "message": "secret TOKEN received; resuming"},
    ),
    (
        CompletedEvent(
            instanceId="devbox_1", instance=INSTANCE, http_services=[SERVICE], warnings=[]
        ),
        {
            "type": "completed",
            "instanceId": "devbox_1",
            "instance": INSTANCE,
            "http_services": [SERVICE],
            "warnings": [],
        },
    ),
    (
        StepFailedEvent(index=1, message="step 1 exited with status 2"),
        {"type": "step_failed", "index": 1, "message": "step 1 exited with status 2"},
    ),
    (
        CancelledEvent(message="the build was cancelled"),
        {"type": "cancelled", "message": "the build was cancelled"},
    ),
    (
        ErrorEvent(message="the service restarted", details=None),
        {"type": "error", "message": "the service restarted", "details": None},
    ),
    (
        ErrorEvent(message="the build failed", details="boot timed out"),
        {"type": "error", "message": "the build failed", "details": "boot timed out"},
    ),
]


def test_every_event_type_has_a_case() -> None:
    assert {type(event) for event, _ in CASES} == set(get_args(BuildEvent))


@pytest.mark.parametrize(("event", "before"), CASES, ids=[kind(e) for e, _ in CASES])
def test_an_event_is_stored_and_sent_as_before_and_decodes_back(
    event: BuildEvent, before: dict[str, Any]
) -> None:
    stored = payload(event)
    assert json.dumps(stored) == json.dumps(before), "same keys, order and values on the wire"
    assert kind(event) == before["type"]
    assert decode(json.loads(json.dumps(before))) == event, "a stored event reads back"


@pytest.mark.parametrize(
    "stored",
    [
        {"type": "progress", "index": 0, "percent": 50},
        {"index": 0, "content": "no type"},
        {"type": "output", "index": 0},
        {"type": "cache", "index": "0", "snapshotId": "snap_1"},
        {**next(b for e, b in CASES if kind(e) == "awaiting_input"), "defaultAction": "later"},
    ],
)
def test_a_stored_event_of_an_unknown_shape_decodes_to_none(stored: dict[str, Any]) -> None:
    assert decode(stored) is None


def test_a_stored_event_with_an_extra_field_still_decodes() -> None:
    stored = {"type": "cancelled", "message": "cancelled by the user", "by": "admin"}
    assert decode(stored) == CancelledEvent(message="cancelled by the user")


def test_the_terminal_events_are_the_four_that_end_a_run() -> None:
    assert frozenset({"completed", "cancelled", "error", "step_failed"}) == TERMINAL
    assert {kind(e) for e, _ in CASES} >= TERMINAL


class MemoryStore(TemplateStore):
    """The store's event methods, the payloads kept as JSON text as the database keeps them."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, str]]] = {}
        self.listeners: list[Callable[[str], None]] = []
        self.database = cast(Database, self)

    def subscribe(self, topic: str, listener: Callable[[str], None]) -> None:
        assert topic == RUN_EVENTS
        self.listeners.append(listener)

    async def append_event(
        self, run_id: str, seq: int, payload: dict[str, Any], **run_fields: object
    ) -> None:
        self.rows.setdefault(run_id, []).append((seq, json.dumps(payload)))
        for listener in self.listeners:  # the announcement after the commit
            listener(run_id)

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        return [(seq, json.loads(text)) for seq, text in self.rows.get(run_id, []) if seq > after]

    async def run(self, run_id: str) -> RunRecord | None:
        return RunRecord(
            id=run_id, template_id="tpl_1", user_id="u_1", status=RunStatus.RUNNING, created_at=0
        )


async def test_emit_stores_the_json_of_before_and_follow_ends_at_the_terminal_event() -> None:
    store = MemoryStore()
    events = RunEvents(store)
    run = [e for e, _ in CASES if kind(e) not in TERMINAL] + [CASES[-1][0]]
    for event in run:
        await events.emit("run_1", event)

    before = [b for e, b in CASES if kind(e) not in TERMINAL] + [CASES[-1][1]]
    assert [text for _, text in store.rows["run_1"]] == [json.dumps(b) for b in before]
    assert [seq for seq, _ in store.rows["run_1"]] == list(range(1, len(before) + 1))
    assert await events.history("run_1") == before
    assert [e async for e in events.follow("run_1")] == before


async def test_a_stream_passes_on_an_unreadable_event_and_ends_at_an_unreadable_terminal() -> None:
    store = MemoryStore()
    odd = {"type": "progress", "percent": 50}
    old_end = {"type": "error", "message": "an older shape, without details"}
    await store.append_event("run_1", 1, odd)
    await store.append_event("run_1", 2, old_end)
    await store.append_event("run_1", 3, {"type": "output", "index": 0, "content": "never"})

    assert decode(old_end) is None
    assert [e async for e in RunEvents(store).follow("run_1")] == [odd, old_end]
