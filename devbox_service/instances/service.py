"""Instances are devboxes: one record, two views. This is the Morph view of them — the
contract's statuses, string metadata, pages — and `exec`, which runs a command in the guest.
Every rule (visibility, the state machine, limits) stays in the devbox services it calls."""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.backends.base import MachineSpec, SSHEndpoint
from devbox_service.devboxes.checkpoints import DEFAULT_IMAGE, CheckpointService
from devbox_service.devboxes.disk_resizes import DiskResizes
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    DiskResizeRecord,
    DiskResizeStatus,
    SnapshotRecord,
)
from devbox_service.devboxes.schemas import DevboxResponse, WakeOn
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.sizes import SizeLimits, requested_spec
from devbox_service.devboxes.views import GUEST_IP, DevboxViews, ttl_of
from devbox_service.errors import InvalidInput, NotFound, PayloadTooLarge
from devbox_service.instances.schemas import (
    MAX_COMMAND_BYTES,
    BootSnapshotRequest,
    CreateSnapshotRequest,
    DiskResizeError,
    DiskResizeOperation,
    ExecResponse,
    ExposeRequest,
    Instance,
    InstanceBranchResponse,
    InstanceNetworking,
    InstancePage,
    InstanceRefs,
    InstanceSnapshotRequest,
    InstanceSpec,
    MorphSnapshot,
    SnapshotPage,
    SnapshotRefs,
    SnapshotTtl,
    StartInstanceRequest,
)
from devbox_service.previews.models import HttpServiceAuthMode
from devbox_service.previews.service import HttpServiceRegistry

T = TypeVar("T")

STATUS = {
    DevboxStatus.PROVISIONING: "pending",
    DevboxStatus.READY: "ready",
    DevboxStatus.PAUSING: "saving",  # Morph saves memory on pause
    DevboxStatus.PAUSED: "paused",
    DevboxStatus.RESUMING: "pending",
    DevboxStatus.REBOOTING: "pending",
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


class SizeRequest(Protocol):
    """A request body that may ask for a machine size (create, boot, reboot)."""

    @property
    def vcpus(self) -> int | None: ...
    @property
    def memory(self) -> int | None: ...
    @property
    def disk_size(self) -> int | None: ...


class TtlRequestFields(Protocol):
    """A request body that may set an instance TTL (start, boot, reboot)."""

    @property
    def ttl_seconds(self) -> int | None: ...
    @property
    def ttl_action(self) -> Literal["stop", "pause"] | None: ...


class GuestEndpoints(Protocol):
    async def connect_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        """The guest's sshd; a paused devbox is woken first when it wakes on SSH."""
        ...


BOOT_TIMEOUT = 300.0


IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def disk_resize_view(operation: DiskResizeRecord) -> DiskResizeOperation:
    done = operation.status is not DiskResizeStatus.RUNNING
    return DiskResizeOperation(
        id=operation.id,
        instance_id=operation.devbox_id,
        previous_disk_size=operation.previous_mb,
        requested_disk_size=operation.requested_mb,
        capacity_mode="online",
        status=operation.status.value,
        phase="complete" if operation.status is DiskResizeStatus.SUCCEEDED else "accepted",
        capacity_generation=operation.capacity_generation,
        created_at=_iso(operation.created_at),
        updated_at=_iso(operation.updated_at),
        completed_at=_iso(operation.completed_at) if done and operation.completed_at else None,
        error=None
        if operation.error is None
        else DiskResizeError(code="disk_resize_failed", message=operation.error, retryable=True),
    )


def shell_command(argv: list[str]) -> str:
    """One element is a script for the login shell; more are an argv, quoted as given."""
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise PayloadTooLarge(f"the command is over {MAX_COMMAND_BYTES} bytes")
    if "\x00" in command:
        raise InvalidInput("the command contains a NUL character")
    return command


def paginate(found: list[T], page: int, size: int) -> tuple[list[T], dict[str, Any]]:
    """One page of `found` and the counts the contract's paginated lists carry."""
    pages = max(1, math.ceil(len(found) / size))
    start = (page - 1) * size
    counts = {
        "total": len(found),
        "page": page,
        "size": size,
        "total_pages": pages,
        "has_next": page < pages,
        "has_prev": page > 1,
    }
    return found[start : start + size], counts


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
        ttl=ttl_of(record) or msgspec.UNSET,
        wake_on=WakeOn(wake_on_ssh=record.wake_on_ssh, wake_on_http=record.wake_on_http),
        metadata={str(k): v if isinstance(v, str) else str(v) for k, v in record.metadata.items()},
    )


class InstanceService:
    def __init__(
        self,
        devboxes: DevboxService,
        views: DevboxViews,
        checkpoints: CheckpointService,
        previews: HttpServiceRegistry,
        guests: GuestEndpoints,
        commands: GuestCommands,
        sizes: SizeLimits,
        disk_resizes: DiskResizes,
    ) -> None:
        self._sizes = sizes
        self._disk_resizes = disk_resizes
        self._devboxes = devboxes
        self._checkpoints = checkpoints
        self._previews = previews
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
        items, counts = paginate(found, page, size)
        return InstancePage(instances=items, **counts)

    def _asked_size(self, base: MachineSpec, request: SizeRequest) -> MachineSpec:
        return requested_spec(
            base,
            self._sizes,
            vcpus=request.vcpus,
            memory=request.memory,
            disk_size=request.disk_size,
        )

    async def _set_ttl_asked(
        self, principal: Principal, instance_id: str, request: TtlRequestFields
    ) -> None:
        if request.ttl_seconds is not None:
            await self._devboxes.set_ttl(
                principal, instance_id, request.ttl_seconds, request.ttl_action
            )

    async def start(
        self, principal: Principal, snapshot_id: str, request: StartInstanceRequest
    ) -> Instance:
        started = await self._devboxes.create(
            principal, snapshot_id, name=None, metadata=dict(request.metadata or {})
        )
        await self._set_ttl_asked(principal, started.id, request)
        return await self.get(principal, started.id)

    async def reboot(
        self, principal: Principal, instance_id: str, request: BootSnapshotRequest
    ) -> Instance:
        """A reboot; with a size in the body a cold one into it, the disk kept."""
        record = await self._devboxes.visible(principal, instance_id)
        spec = self._asked_size(record.spec, request)
        if request.metadata is not None:
            await self._devboxes.update_metadata(principal, instance_id, request.metadata)
        await self._set_ttl_asked(principal, instance_id, request)
        await self._devboxes.reboot(principal, instance_id, spec)
        return await self.get(principal, instance_id)

    async def boot(
        self, principal: Principal, snapshot_id: str, request: BootSnapshotRequest
    ) -> Instance:
        """`POST /snapshot/{id}/boot`: an instance from a snapshot, in its own spec."""
        snapshot = await self._checkpoints.bootable(principal, snapshot_id)
        spec = self._asked_size(snapshot.spec, request)
        started = await self._devboxes.start_from(
            principal,
            await self._checkpoints.in_size(principal, snapshot, spec),
            name=None,
            metadata=dict(request.metadata or {}),
            disk_mb=spec.disk_mb,
        )
        await self._set_ttl_asked(principal, started.id, request)
        return await self.get(principal, started.id)

    # snapshots

    async def snapshot_view(self, record: SnapshotRecord) -> MorphSnapshot:
        return MorphSnapshot(
            id=record.id,
            created=int(record.created_at),
            status=record.status.value,
            spec=InstanceSpec(
                vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb
            ),
            refs=SnapshotRefs(image_id=await self._checkpoints.image_of(record.id)),
            digest=record.digest,
            metadata={str(k): str(v) for k, v in record.metadata.items()},
            ttl=SnapshotTtl(
                ttl_seconds=record.ttl_seconds,
                ttl_expire_at=None if record.ttl_expire_at is None else int(record.ttl_expire_at),
                waiting_for=record.ttl_waiting_for,
            ),
        )

    async def snapshots(
        self, principal: Principal, digest: str | None, metadata: dict[str, str]
    ) -> list[MorphSnapshot]:
        records = [
            r
            for r in await self._checkpoints.records(principal)
            if (digest is None or r.digest == digest)
            and all(r.metadata.get(k) == v for k, v in metadata.items())
        ]
        return [await self.snapshot_view(r) for r in records]

    async def snapshot_page(
        self,
        principal: Principal,
        digest: str | None,
        metadata: dict[str, str],
        page: int,
        size: int,
    ) -> SnapshotPage:
        found = await self.snapshots(principal, digest, metadata)
        items, counts = paginate(found, page, size)
        return SnapshotPage(snapshots=items, **counts)

    async def snapshot(self, principal: Principal, snapshot_id: str) -> MorphSnapshot:
        return await self.snapshot_view(await self._checkpoints.record(principal, snapshot_id))

    async def set_snapshot_metadata(
        self, principal: Principal, snapshot_id: str, metadata: dict[str, str]
    ) -> MorphSnapshot:
        """Replaces the whole of it (the contract's rule for snapshots)."""
        record = await self._checkpoints.record(principal, snapshot_id)
        labelled = await self._checkpoints.label(
            principal, snapshot_id, digest=record.digest, metadata=metadata
        )
        return await self.snapshot_view(labelled)

    async def save(
        self,
        principal: Principal,
        instance_id: str,
        digest: str | None,
        request: InstanceSnapshotRequest,
    ) -> MorphSnapshot:
        """`POST /instance/{id}/snapshot`: answered `ready`. A digest the organization has
        already returns that snapshot (how SDK users cache setup steps)."""
        await self.get(principal, instance_id)
        if known := await self._by_digest(principal, digest):
            return known
        saved = await self._checkpoints.save(principal, instance_id, digest or "snapshot")
        await self._checkpoints.label(
            principal, saved.id, digest=digest, metadata=dict(request.metadata or {})
        )
        if request.ttl_seconds is not None:
            await self._checkpoints.set_ttl(principal, saved.id, request.ttl_seconds)
        return await self.snapshot(principal, saved.id)

    async def _by_digest(self, principal: Principal, digest: str | None) -> MorphSnapshot | None:
        if digest is None:
            return None
        known = await self._checkpoints.by_digest(principal, digest)
        return await self.snapshot_view(known) if known else None

    async def create_snapshot(
        self, principal: Principal, request: CreateSnapshotRequest
    ) -> MorphSnapshot:
        """`POST /snapshot`: an image booted and saved (the digest first looked up)."""
        if known := await self._by_digest(principal, request.digest):
            return known
        boot = await self._checkpoints.bootable(principal, request.image_id or DEFAULT_IMAGE)
        spec = self._asked_size(boot.spec, request)
        started = await self._devboxes.start_from(
            principal,
            await self._checkpoints.in_size(principal, boot, spec),
            name="snapshot",
            metadata={},
            disk_mb=spec.disk_mb,
        )
        try:
            await self._devboxes.wait_ready(started.id, timeout=BOOT_TIMEOUT)
            saved = await self._checkpoints.save(
                principal, started.id, request.digest or boot.image_id
            )
        finally:
            await self._devboxes.remove(started.id)
        await self._checkpoints.label(
            principal, saved.id, digest=request.digest, metadata=dict(request.metadata or {})
        )
        if request.ttl_seconds is not None:
            await self._checkpoints.set_ttl(principal, saved.id, request.ttl_seconds)
        return await self.snapshot(principal, saved.id)

    async def branch(
        self, principal: Principal, instance_id: str, count: int
    ) -> InstanceBranchResponse:
        await self.get(principal, instance_id)
        children = await self._checkpoints.branch(principal, instance_id, name=None, count=count)
        snapshot_id = children[0].base_snapshot_id
        assert snapshot_id is not None
        return InstanceBranchResponse(
            snapshot=await self.snapshot(principal, snapshot_id),
            instances=[await self.get(principal, child.id) for child in children],
        )

    # disk

    async def resize_disk(
        self, principal: Principal, instance_id: str, disk_size: int, key: str | None
    ) -> DiskResizeOperation:
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise InvalidInput("Idempotency-Key must be 1 to 128 visible ASCII characters")
        operation = await self._disk_resizes.request(
            principal, instance_id, disk_size, key or uuid.uuid4().hex
        )
        return disk_resize_view(operation)

    async def disk_resize(
        self, principal: Principal, instance_id: str, operation_id: str
    ) -> DiskResizeOperation:
        return disk_resize_view(await self._disk_resizes.get(principal, instance_id, operation_id))

    # exposed services

    async def expose(
        self, principal: Principal, instance_id: str, request: ExposeRequest
    ) -> Instance:
        mode = HttpServiceAuthMode(request.auth_mode) if request.auth_mode else None
        await self._previews.expose(
            principal, instance_id, name=request.name, port=request.port, auth_mode=mode
        )
        return await self.get(principal, instance_id)

    async def hide(self, principal: Principal, instance_id: str, name: str) -> Instance:
        await self._previews.unexpose(principal, instance_id, name)
        return await self.get(principal, instance_id)

    async def exec(
        self, principal: Principal, instance_id: str, argv: list[str], idempotency_key: str | None
    ) -> ExecResponse:
        """A repeat with the same `Idempotency-Key` (the SDK retries once on a broken
        connection) gets the first run's answer instead of running the command again."""
        command = shell_command(argv)
        endpoint = await self._endpoint(principal, instance_id)
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
        endpoint = await self._endpoint(principal, instance_id)
        return self._stream(endpoint, command)

    async def _endpoint(self, principal: Principal, instance_id: str) -> SSHEndpoint:
        """Exec wakes a paused instance as SSH does (when it wakes on SSH; else 409)."""
        await self.get(principal, instance_id)
        return await self._guests.connect_target(instance_id, woken_by="SSH")

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
