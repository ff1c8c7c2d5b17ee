"""A build step that prints without end: its stored output is bounded, its failure still
names its last lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from devbox_service.backends.base import SSHEndpoint
from devbox_service.devbox_templates.builds import (
    STEP_OUTPUT_MAX_CHARS,
    Redactor,
    StepFailed,
    StepRunner,
)
from devbox_service.devbox_templates.events import BuildEvent, OutputEvent
from devbox_service.devbox_templates.spec import CommandStep

ENDPOINT = SSHEndpoint(host="127.0.0.1", port=22, username="root", private_key_path="/k")


class Flooding:
    """A guest whose step prints 8 MiB in 8 KiB chunks (the adapter's reads), then fails."""

    async def stream(
        self, endpoint: SSHEndpoint, command: str, on_output: Callable[[str], Awaitable[None]]
    ) -> int:
        line = "x" * 99 + "\n"
        for _ in range(1024):
            await on_output(line * 82)
        await on_output("the last words\n")
        return 1

    async def forget(self, endpoint: SSHEndpoint) -> None:
        return None


class Events:
    def __init__(self) -> None:
        self.stored: list[BuildEvent] = []

    async def emit(self, run_id: str, event: BuildEvent) -> None:
        self.stored.append(event)


class Guests:
    async def guest_endpoint(self, principal: object, devbox_id: str, act: object) -> SSHEndpoint:
        return ENDPOINT


async def test_a_step_that_floods_its_output_stores_a_bounded_part_and_says_so() -> None:
    events = Events()
    unused = cast(Any, None)
    runner = StepRunner(
        principal=unused,
        run=cast(Any, SimpleNamespace(id="run_1")),
        devbox_id="dbx_1",
        events=cast(Any, events),
        store=unused,
        guests=cast(Any, Guests()),
        shell=Flooding(),
        secrets=unused,
        previews=unused,
        runtime_secrets={},
        secret_wait=1.0,
        prompts={},
        redactor=Redactor(),
    )
    with pytest.raises(StepFailed, match="the last words") as failed:
        await runner.carry_out(0, CommandStep(run="yes"))
    assert len(failed.value.message) < 20_000, "the failure names only the last lines"
    output = [e.content for e in events.stored if isinstance(e, OutputEvent)]
    kept = "".join(output)
    assert STEP_OUTPUT_MAX_CHARS <= len(kept) < STEP_OUTPUT_MAX_CHARS + 200
    assert kept.endswith("the rest is not kept]\n")
    assert len(output) < STEP_OUTPUT_MAX_CHARS // 4096, "no event for each dropped chunk"
