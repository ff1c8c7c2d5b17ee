"""Instances are devboxes: one record, two views. This is the Morph view of them — the
contract's statuses, string metadata, pages — and `exec`, which runs a command in the guest.
Every rule (visibility, the state machine, limits) stays in the devbox services it calls."""

from __future__ import annotations

import asyncio
import math
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from devbox_service.auth.models import Principal
from devbox_service.backends.base import SSHEndpoint
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.views import GUEST_IP, DevboxViews
from devbox_service.errors import InvalidInput, NotFound, PayloadTooLarge
from devbox_service.instances.schemas import (
    MAX_COMMAND_BYTES,
    ExecResponse,
    Instance,
    InstanceNetworking,
    InstancePage,
    InstanceRefs,
    InstanceSpec,
    StartInstanceRequest,
)

STATUS = {
    DevboxStatus.PROVISIONING: "pending",
    DevboxStatus.READY: "ready",
    DevboxStatus.PAUSING: "saving",  # Morph saves memory on pause
    DevboxStatus.PAUSED: "paused",
    DevboxStatus.RESUMING: "pending",
    DevboxStatus.REBOOTING: "pending",
    DevboxStatus.SAVING: "saving",
    DevboxStatus.ERROR: "error",
}
"""A devbox's status as an instance's; deleting ones are gone already (404, not listed)."""

EXEC_TIMEOUT = 3600.0
ExecKey = tuple[str, str, str]  # user, instance, Idempotency-Key
IDEMPOTENCY_SECONDS = 600.0


class GuestCommands(Protocol):
    """Commands in a guest (the SSH adapter in ssh/guest.py)."""

    async def execute(
        self, endpoint: SSHEndpoint, command: str, timeout: float
    ) -> tuple[int, str, str]: ...

    async def execute_streaming(
        self,
        endpoint: SSHEndpoint,
        command: str,
        on_output: Callable[[str, str], Awaitable[None]],
    ) -> int: ...


class GuestEndpoints(Protocol):
    async def guest_endpoint(self, principal: Principal, devbox_id: str) -> SSHEndpoint: ...


def shell_command(argv: list[str]) -> str:
    """One element is a script for the login shell; more are an argv, quoted as given."""
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise PayloadTooLarge(f"the command is over {MAX_COMMAND_BYTES} bytes")
    if "\x00" in command:
        raise InvalidInput("the command contains a NUL character")
    return command


def metadata_filter(query: dict[str, str]) -> dict[str, str]:
    """`metadata[k]=v` query parameters as {k: v} (ANDed)."""
    return {
        key[len("metadata[") : -1]: value
        for key, value in query.items()
        if key.startswith("metadata[") and key.endswith("]")
    }


def instance_view(view: DevboxResponse, record: DevboxRecord) -> Instance:
    return Instance(
        id=record.id,
        created=int(record.created_at),
        status=STATUS[record.status],  # type: ignore[arg-type]
        spec=InstanceSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        refs=InstanceRefs(snapshot_id=record.base_snapshot_id, image_id=record.image_id),
        networking=InstanceNetworking(
            internal_ip=GUEST_IP,
            http_services=view.networking.http_services if view.networking else [],
        ),
        metadata={str(k): v if isinstance(v, str) else str(v) for k, v in record.metadata.items()},
    )


class InstanceService:
    def __init__(
        self,
        devboxes: DevboxService,
        views: DevboxViews,
        guests: GuestEndpoints,
        commands: GuestCommands,
    ) -> None:
        self._devboxes = devboxes
        self._views = views
        self._guests = guests
        self._commands = commands
        self._exec_results: dict[ExecKey, tuple[float, asyncio.Task[ExecResponse]]] = {}

    async def get(self, principal: Principal, instance_id: str) -> Instance:
        record = await self._devboxes.visible(principal, instance_id)
        if record.status not in STATUS:
            raise NotFound.of("instance", instance_id)
        return instance_view(await self._views.detail(record), record)

    async def matching(self, principal: Principal, metadata: dict[str, str]) -> list[Instance]:
        records = [
            r
            for r in await self._devboxes.records(principal)
            if r.status in STATUS and all(r.metadata.get(k) == v for k, v in metadata.items())
        ]
        views = await self._views.details(records)
        return [instance_view(v, r) for v, r in zip(views, records, strict=True)]

    async def page(
        self, principal: Principal, metadata: dict[str, str], page: int, size: int
    ) -> InstancePage:
        found = await self.matching(principal, metadata)
        pages = max(1, math.ceil(len(found) / size))
        start = (page - 1) * size
        return InstancePage(
            instances=found[start : start + size],
            total=len(found),
            page=page,
            size=size,
            total_pages=pages,
            has_next=page < pages,
            has_prev=page > 1,
        )

    async def start(
        self, principal: Principal, snapshot_id: str, request: StartInstanceRequest
    ) -> Instance:
        if request.ttl_seconds is not None:
            raise InvalidInput(
                "instance TTLs are not supported by this service yet: start without "
                "ttl_seconds and stop the instance yourself"
            )
        started = await self._devboxes.create(
            principal, snapshot_id, name=None, metadata=dict(request.metadata or {})
        )
        return await self.get(principal, started.id)

    async def exec(
        self, principal: Principal, instance_id: str, argv: list[str], idempotency_key: str | None
    ) -> ExecResponse:
        """A repeat with the same `Idempotency-Key` (the SDK retries once on a broken
        connection) gets the first run's answer instead of running the command again."""
        command = shell_command(argv)
        endpoint = await self._guests.guest_endpoint(principal, instance_id)
        if idempotency_key is None:
            return await self._run(endpoint, command)
        now = time.monotonic()
        for key, (at, _) in list(self._exec_results.items()):
            if now - at > IDEMPOTENCY_SECONDS:
                del self._exec_results[key]
        key = (principal.user_id, instance_id, idempotency_key)
        if key not in self._exec_results:
            task = asyncio.ensure_future(self._run(endpoint, command))
            self._exec_results[key] = (now, task)
        return await asyncio.shield(self._exec_results[key][1])

    async def _run(self, endpoint: SSHEndpoint, command: str) -> ExecResponse:
        status, stdout, stderr = await self._commands.execute(endpoint, command, EXEC_TIMEOUT)
        return ExecResponse(exit_code=status, stdout=stdout, stderr=stderr)

    async def exec_stream(
        self, principal: Principal, instance_id: str, argv: list[str]
    ) -> AsyncIterator[tuple[str, str | int]]:
        """Check access and the command now (errors before the stream starts); then
        `("stdout" | "stderr", text)` as it comes and finally `("exit_code", status)`."""
        command = shell_command(argv)
        endpoint = await self._guests.guest_endpoint(principal, instance_id)
        return self._stream(endpoint, command)

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
