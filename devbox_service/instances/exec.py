"""`exec`: a command run in an instance's guest over SSH, answered whole or streamed. The
caller (InstanceService) has checked that the instance is visible; activity is noted by the
auth guard, as for every action route, so nothing here notes it again."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import InvalidInput, PayloadTooLarge
from devbox_service.instances.schemas import MAX_COMMAND_BYTES, ExecResponse

log = logging.getLogger(__name__)

EXEC_TIMEOUT = 3600.0
DEFAULT_OUTPUT_MAX_BYTES = 1024 * 1024
ExecKey = tuple[str, str, str]  # user, instance, Idempotency-Key
IDEMPOTENCY_SECONDS = 600.0
REMEMBERED_PER_USER = 32
"""Answers kept for retries, per user (each holds up to twice the output cap): past it the
oldest is forgotten, so a retry of that one runs the command again."""


class GuestCommands(Protocol):
    """Commands in a guest (the SSH adapter in ssh/guest.py)."""

    async def execute(
        self, endpoint: SSHEndpoint, command: str, timeout: float, max_bytes: int
    ) -> tuple[int, str, str, bool]:
        """(status, stdout, stderr, truncated): at most `max_bytes` of each stream kept."""
        ...

    async def execute_streaming(
        self,
        endpoint: SSHEndpoint,
        command: str,
        on_output: Callable[[str, str], Awaitable[None]],
    ) -> int: ...


class GuestEndpoints(Protocol):
    async def ready_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        """The guest's sshd, a paused devbox woken first when it wakes on SSH; the caller has
        already noted the activity."""
        ...


def shell_command(argv: list[str]) -> str:
    """One element is a script for the login shell; more are an argv, quoted as given."""
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise PayloadTooLarge(f"the command is over {MAX_COMMAND_BYTES} bytes")
    if "\x00" in command:
        raise InvalidInput("the command contains a NUL character")
    return command


class InstanceExec:
    def __init__(
        self,
        guests: GuestEndpoints,
        commands: GuestCommands,
        output_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES,
    ) -> None:
        self._guests = guests
        self._commands = commands
        self._output_max_bytes = output_max_bytes
        self._results: dict[ExecKey, tuple[float, asyncio.Task[ExecResponse]]] = {}

    async def run(
        self, user_id: str, instance_id: str, command: str, idempotency_key: str | None
    ) -> ExecResponse:
        """A repeat with the same `Idempotency-Key` (the SDK retries once on a broken
        connection) gets the first run's answer instead of running the command again."""
        endpoint = await self._endpoint(instance_id)
        if idempotency_key is None:
            return await self._run(endpoint, command)
        now = time.monotonic()
        for key, (at, _) in list(self._results.items()):
            if now - at > IDEMPOTENCY_SECONDS:
                del self._results[key]
        key = (user_id, instance_id, idempotency_key)
        if key not in self._results:
            mine = [k for k in self._results if k[0] == user_id]  # oldest first (insertion)
            for old in mine[: max(0, len(mine) - REMEMBERED_PER_USER + 1)]:
                del self._results[old]
            task = asyncio.ensure_future(self._run(endpoint, command))
            self._results[key] = (now, task)
        return await asyncio.shield(self._results[key][1])

    async def stream(self, instance_id: str, command: str) -> AsyncIterator[tuple[str, str | int]]:
        """Reach the guest now (errors before the stream starts); then `("stdout" |
        "stderr", text)` as it comes and finally `("exit_code", status)`."""
        return self._stream(await self._endpoint(instance_id), command)

    async def _endpoint(self, instance_id: str) -> SSHEndpoint:
        """Exec wakes a paused instance as SSH does (when it wakes on SSH; else 409)."""
        return await self._guests.ready_target(instance_id, woken_by="SSH")

    async def _run(self, endpoint: SSHEndpoint, command: str) -> ExecResponse:
        """The answer keeps at most `output_max_bytes` of each stream (the whole answer is
        held until it is sent): `truncated` says so, a field the Morph SDK ignores."""
        limit = self._output_max_bytes
        status, stdout, stderr, truncated = await self._commands.execute(
            endpoint, command, EXEC_TIMEOUT, limit
        )
        if truncated:
            log.warning("exec output over %d bytes kept its first %d", limit, limit)
        return ExecResponse(exit_code=status, stdout=stdout, stderr=stderr, truncated=truncated)

    async def _stream(
        self, endpoint: SSHEndpoint, command: str
    ) -> AsyncIterator[tuple[str, str | int]]:
        output: asyncio.Queue[tuple[str, str | int]] = asyncio.Queue(maxsize=64)

        async def forward(kind: str, text: str) -> None:
            await output.put((kind, text))

        async def run() -> None:
            status = await self._commands.execute_streaming(endpoint, command, forward)
            await output.put(("exit_code", status))

        runner = asyncio.create_task(run())
        try:
            while True:
                getter = asyncio.ensure_future(output.get())
                await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    runner.result()  # the command could not run: raise why
                    continue
                kind, value = getter.result()
                yield kind, value
                if kind == "exit_code":
                    return
        finally:
            runner.cancel()
