"""Instances are devboxes: one record, two views. This is the Morph view of them: each route
of the instance API is one call here, which composes the devbox services (every rule on
visibility, the state machine and limits stays in them) and renders the answer."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Literal, Protocol

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends.base import MachineSpec
from devbox_service.devboxes.checkpoints import DEFAULT_IMAGE, CheckpointService
from devbox_service.devboxes.disk_resizes import DiskResizes
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.lifecycle import Action
from devbox_service.devboxes.models import DevboxRecord
from devbox_service.devboxes.records import check_metadata_size
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.sizes import SizeLimits, requested_spec
from devbox_service.errors import InvalidInput, NotFound
from devbox_service.instances.exec import (
    DEFAULT_OUTPUT_MAX_BYTES,
    GuestCommands,
    InstanceExec,
    shell_command,
)
from devbox_service.instances.schemas import (
    BootSnapshotRequest,
    CreateSnapshotRequest,
    DiskResizeOperation,
    ExecResponse,
    ExposeRequest,
    Instance,
    InstanceBranchResponse,
    InstanceList,
    InstancePage,
    InstanceSnapshotRequest,
    InstanceSshKey,
    MorphImageList,
    MorphSnapshot,
    StartInstanceRequest,
    TtlRequest,
    WakeOnRequest,
)
from devbox_service.instances.snapshots import MorphSnapshots
from devbox_service.instances.views import (
    STATUS,
    disk_resize_view,
    image_view,
    instance_view,
    paginate,
)
from devbox_service.previews.models import HttpServiceAuthMode
from devbox_service.previews.service import HttpServiceRegistry

BOOT_TIMEOUT = 300.0
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


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


class InstanceService:
    def __init__(
        self,
        devboxes: DevboxService,
        checkpoints: CheckpointService,
        previews: HttpServiceRegistry,
        guests: GuestAccess,
        commands: GuestCommands,
        sizes: SizeLimits,
        disk_resizes: DiskResizes,
        image_disk_mb: int,
        exec_output_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES,
    ) -> None:
        self._devboxes = devboxes
        self._checkpoints = checkpoints
        self.snapshots = MorphSnapshots(checkpoints)
        """`/api/snapshot`'s reads and edits (its routes call it directly); creating and
        booting snapshots compose more, so they are here."""
        self._previews = previews
        self._guests = guests
        self._exec = InstanceExec(guests, commands, exec_output_max_bytes)
        self._sizes = sizes
        self._disk_resizes = disk_resizes
        self._image_disk_mb = image_disk_mb

    # rendering: the one place a deleting devbox becomes a 404

    async def _live(self, principal: Principal, instance_id: str, act: Act) -> DevboxRecord:
        """The instance's record if the policy lets the caller do `act` to it. A devbox
        being deleted is gone already as an instance: 404, as the list leaves it out."""
        record = await self._devboxes.visible(principal, instance_id, act)
        if record.status not in STATUS:
            raise NotFound.of("instance", instance_id)
        return record

    async def _render(self, records: list[DevboxRecord]) -> list[Instance]:
        """Instances from their records and exposed services (one query for all of them)."""
        services = await self._previews.http_services_for([r.id for r in records])
        return [instance_view(r, services.get(r.id, [])) for r in records]

    async def get(self, principal: Principal, instance_id: str, act: Act = Act.VIEW) -> Instance:
        """The instance's view; after a change, read under the act that changed it (an agent
        token allowed to write metadata sees the answer without the read scope)."""
        (found,) = await self._render([await self._live(principal, instance_id, act)])
        return found

    async def instances(self, principal: Principal, metadata: dict[str, str]) -> InstanceList:
        return InstanceList(data=await self._matching(principal, metadata))

    async def _matching(self, principal: Principal, metadata: dict[str, str]) -> list[Instance]:
        records = [
            r
            for r in await self._devboxes.records(principal)
            if r.status in STATUS and all(r.metadata.get(k) == v for k, v in metadata.items())
        ]
        return await self._render(records)

    async def page(
        self, principal: Principal, metadata: dict[str, str], page: int, size: int
    ) -> InstancePage:
        items, counts = paginate(await self._matching(principal, metadata), page, size)
        return InstancePage(instances=items, **counts)

    async def images(self) -> MorphImageList:
        images = await self._checkpoints.images()
        return MorphImageList(data=[image_view(i, self._image_disk_mb) for i in images])

    # lifecycle: the devbox services act (and refuse, 409 for a deleting one), then render

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

    async def stop(self, principal: Principal, instance_id: str) -> None:
        """Stopping one already being deleted is a 404, not a second deletion."""
        await self._live(principal, instance_id, Act.DELETE)
        await self._devboxes.delete(principal, instance_id)

    async def pause(self, principal: Principal, instance_id: str) -> Instance:
        await self._devboxes.switch(principal, instance_id, Action.PAUSE)
        return await self.get(principal, instance_id, Act.OPERATE)

    async def resume(self, principal: Principal, instance_id: str) -> Instance:
        await self._devboxes.switch(principal, instance_id, Action.RESUME)
        return await self.get(principal, instance_id, Act.OPERATE)

    async def reboot(
        self, principal: Principal, instance_id: str, request: BootSnapshotRequest
    ) -> Instance:
        """A reboot; with a size in the body a cold one into it, the disk kept."""
        record = await self._live(principal, instance_id, Act.OPERATE)
        spec = self._asked_size(record.spec, request)
        if request.metadata is not None:
            await self._devboxes.update_metadata(principal, instance_id, request.metadata)
        await self._set_ttl_asked(principal, instance_id, request)
        await self._devboxes.start_reboot(principal, instance_id, spec)
        return await self.get(principal, instance_id, Act.OPERATE)

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

    # record fields

    async def set_metadata(
        self, principal: Principal, instance_id: str, metadata: dict[str, str]
    ) -> Instance:
        """Merged into what is there."""
        await self._devboxes.update_metadata(principal, instance_id, metadata)
        return await self.get(principal, instance_id, Act.CONFIGURE)

    async def set_ttl(
        self, principal: Principal, instance_id: str, request: TtlRequest
    ) -> Instance:
        await self._live(principal, instance_id, Act.SET_TTL)
        await self._devboxes.set_ttl(
            principal, instance_id, request.ttl_seconds, request.ttl_action
        )
        return await self.get(principal, instance_id, Act.SET_TTL)

    async def set_wake_on(
        self, principal: Principal, instance_id: str, request: WakeOnRequest
    ) -> Instance:
        await self._live(principal, instance_id, Act.CONFIGURE)
        await self._devboxes.set_wake_on(
            principal, instance_id, ssh=request.wake_on_ssh, http=request.wake_on_http
        )
        return await self.get(principal, instance_id, Act.CONFIGURE)

    async def ssh_key(self, principal: Principal, instance_id: str) -> InstanceSshKey:
        await self._live(principal, instance_id, Act.SSH)
        return InstanceSshKey(**await self._guests.ssh_key(principal, instance_id))

    async def rotate_ssh_key(self, principal: Principal, instance_id: str) -> InstanceSshKey:
        await self._live(principal, instance_id, Act.SSH)
        return InstanceSshKey(**await self._guests.rotate_ssh_key(principal, instance_id))

    # exposed services

    async def expose(
        self, principal: Principal, instance_id: str, request: ExposeRequest
    ) -> Instance:
        mode = HttpServiceAuthMode(request.auth_mode) if request.auth_mode else None
        await self._previews.expose(
            principal, instance_id, name=request.name, port=request.port, auth_mode=mode
        )
        return await self.get(principal, instance_id, Act.EXPOSE)

    async def hide(self, principal: Principal, instance_id: str, name: str) -> Instance:
        await self._previews.unexpose(principal, instance_id, name)
        return await self.get(principal, instance_id, Act.EXPOSE)

    # commands: visibility checked here once; the auth guard noted the activity

    async def exec(
        self, principal: Principal, instance_id: str, argv: list[str], idempotency_key: str | None
    ) -> ExecResponse:
        command = shell_command(argv)
        await self._live(principal, instance_id, Act.EXEC)
        return await self._exec.run(principal.user_id, instance_id, command, idempotency_key)

    async def exec_stream(
        self, principal: Principal, instance_id: str, argv: list[str]
    ) -> AsyncIterator[tuple[str, str | int]]:
        """Refusals come before the stream starts (an SSE answer cannot carry them)."""
        command = shell_command(argv)
        await self._live(principal, instance_id, Act.EXEC)
        return await self._exec.stream(instance_id, command)

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

    # snapshots

    async def save(
        self,
        principal: Principal,
        instance_id: str,
        digest: str | None,
        request: InstanceSnapshotRequest,
    ) -> MorphSnapshot:
        """`POST /instance/{id}/snapshot`: answered `ready`. A digest the organization has
        already returns that snapshot."""
        await self._live(principal, instance_id, Act.SAVE)
        check_metadata_size("snapshot", dict(request.metadata or {}))  # before any work
        if known := await self.snapshots.by_digest(principal, digest):
            return known
        saved = await self._checkpoints.save(principal, instance_id, digest or "snapshot")
        return await self.snapshots.labelled(
            principal,
            saved.id,
            digest=digest,
            metadata=request.metadata,
            ttl_seconds=request.ttl_seconds,
        )

    async def create_snapshot(
        self, principal: Principal, request: CreateSnapshotRequest
    ) -> MorphSnapshot:
        """`POST /snapshot`: an image booted and saved (the digest first looked up)."""
        check_metadata_size("snapshot", dict(request.metadata or {}))  # before any work
        if known := await self.snapshots.by_digest(principal, request.digest):
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
        return await self.snapshots.labelled(
            principal,
            saved.id,
            digest=request.digest,
            metadata=request.metadata,
            ttl_seconds=request.ttl_seconds,
        )

    async def branch(
        self, principal: Principal, instance_id: str, count: int
    ) -> InstanceBranchResponse:
        await self._live(principal, instance_id, Act.BRANCH)
        children = await self._checkpoints.branch(principal, instance_id, name=None, count=count)
        snapshot_id = children[0].base_snapshot_id
        assert snapshot_id is not None
        return InstanceBranchResponse(
            snapshot=await self.snapshots.get(principal, snapshot_id),
            instances=[await self.get(principal, child.id) for child in children],
        )
