"""Devbox lifecycle: create, pause, resume, reboot, delete, and who may do which.

The rules of which action fits which status are the table in `lifecycle`; this module drives
the VM backend so that the record stays true, also when an action fails half-way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize
from devbox_service.backends.base import MachineSpec, SnapshotInfo
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.core import DestroyListener, DevboxCore, ReadyHook
from devbox_service.devboxes.lifecycle import Action, require
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.devboxes.records import check_metadata_size
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.sizes import require_growth
from devbox_service.devboxes.store import Changes
from devbox_service.devboxes.views import DevboxViews
from devbox_service.errors import (
    Failed,
)


class DevboxService:
    def __init__(
        self, core: DevboxCore, views: DevboxViews, checkpoints: CheckpointService
    ) -> None:
        self._core = core
        self._views = views
        self._checkpoints = checkpoints

    # for other domains: which devbox a caller may reach

    async def visible(self, principal: Principal, devbox_id: str, act: Act) -> DevboxRecord:
        """The devbox if the one policy lets the caller do `act` to it. Raises NotFound (also
        for other organizations' devboxes), PermissionDenied."""
        return await self._core.visible(principal, devbox_id, act)

    async def records(self, principal: Principal) -> list[DevboxRecord]:
        """Every devbox of the caller's organization, oldest first."""
        return await self._core.store.list_for_org(principal.org_id)

    async def all_records(self) -> list[DevboxRecord]:
        """Every devbox of every organization (the operator's view: metrics, stop report)."""
        return await self._core.store.all()

    @property
    def changes(self) -> Changes:
        """Bumped at every write to a devbox: what live pages wait on instead of polling."""
        return self._core.store.changes

    async def touch(self, devbox_id: str) -> None:
        """Someone acted on the devbox: its idle TTL starts again."""
        await self._core.touch(devbox_id)

    def on_destroy(self, listener: DestroyListener, *, required: bool = False) -> None:
        """`required`: the deletion fails (and is retried) if the listener fails."""
        self._core.on_destroy(listener, required=required)

    # lifecycle

    async def create(
        self,
        principal: Principal,
        snapshot_ref: str,
        *,
        name: str | None,
        metadata: dict[str, Any] | None,
    ) -> DevboxResponse:
        """Record the devbox as provisioning and restore the snapshot in the background.
        Raises NotFound (unknown snapshot), Conflict (snapshot not ready), Unavailable."""
        snapshot = await self._checkpoints.bootable(principal, snapshot_ref)
        return await self.start_from(principal, snapshot, name=name, metadata=metadata)

    async def start_from(
        self,
        principal: Principal,
        snapshot: SnapshotInfo,
        *,
        name: str | None,
        metadata: dict[str, Any] | None,
        after_ready: ReadyHook | None = None,
        disk_mb: int | None = None,
    ) -> DevboxResponse:
        """A new devbox restored from a backend snapshot the caller was already allowed
        (templates boot their step snapshots this way), its disk grown to `disk_mb` if that
        is larger; answers at once as provisioning. Raises LimitReached before anything is
        recorded."""
        spec = snapshot.spec
        if disk_mb is not None and disk_mb > spec.disk_mb:
            spec = msgspec.structs.replace(spec, disk_mb=disk_mb)
        admission = self._core.admission
        async with admission.guard():
            await admission.check_devboxes(principal, 1, spec, self._core.backend)
            record = await self._core.insert(
                principal,
                snapshot_id=snapshot.id,
                image_id=snapshot.image_id,
                spec=spec,
                name=name or "",
                metadata=metadata or {},
                parent_id=None,
                created_detail={"name": "created"},
            )
        await self._checkpoints.use_snapshot(snapshot.id)
        self._core.start_boot([record.id], snapshot.id, after_ready)
        return await self._views.detail(record)

    async def wait_ready(self, devbox_id: str, timeout: float) -> DevboxRecord:
        """Until a new devbox is ready. Raises Failed (it ended in error, or took too long)."""
        record = await self._core.wait(devbox_id, _settled, timeout)
        if record is None or record.status is not DevboxStatus.READY:
            state = "deleted" if record is None else record.error or record.status.value
            raise Failed(f"devbox {devbox_id} did not start: {state}")
        return record

    async def pause(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        """Raises NotFound, Conflict; a backend failure leaves the devbox as it was."""
        await self.switch(principal, devbox_id, Action.PAUSE)
        return await self._views.get(principal, devbox_id, Act.OPERATE)

    async def resume(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        """From memory, or from standby on disk. Raises NotFound, Conflict."""
        await self.switch(principal, devbox_id, Action.RESUME)
        return await self._views.get(principal, devbox_id, Act.OPERATE)

    async def switch(self, principal: Principal, devbox_id: str, action: Action) -> None:
        """Pause or resume without building the devbox view (the instance API renders its
        own from the record)."""
        if action not in (Action.PAUSE, Action.RESUME):
            raise AssertionError(f"{action} is not a switch")
        async with self._core.locked(principal, devbox_id, Act.OPERATE) as record:
            await self._core.apply(record, action)

    # TTLs

    async def set_ttl(
        self, principal: Principal, devbox_id: str, seconds: int | None, action: str | None
    ) -> DevboxResponse:
        """Pause or stop the devbox after `seconds` without activity (None: never); an
        action left out keeps the current one (stop when there is none)."""
        async with self._core.locked(principal, devbox_id, Act.SET_TTL) as record:
            if seconds is None:
                await self._core.store.update(
                    devbox_id, ttl_seconds=None, ttl_action=None, ttl_expire_at=None
                )
            else:
                await self._core.store.update(
                    devbox_id,
                    ttl_seconds=seconds,
                    ttl_action=action or record.ttl_action or "stop",
                    ttl_expire_at=self._core.clock() + seconds,
                )
        return await self._views.get(principal, devbox_id, Act.SET_TTL)

    async def expire(self, now: float) -> list[str]:
        """Carry out the TTL of every devbox idle past its expiry; the ids acted on."""
        acted = []
        for record in await self._core.store.ttl_expired(now):
            if record.ttl_action == "stop":
                await self.remove(record.id)
                acted.append(record.id)
                continue
            async with self._core.held(record.id) as current:
                if current is None or current.status is not DevboxStatus.READY:
                    if current is not None and current.status is DevboxStatus.PAUSED:
                        await self._core.store.update(record.id, ttl_expire_at=None)
                    continue
                await self._core.apply(current, Action.PAUSE)
                await self._core.store.update(record.id, ttl_expire_at=None)
                acted.append(record.id)
        return acted

    async def reboot(
        self, principal: Principal, devbox_id: str, spec: MachineSpec | None = None
    ) -> DevboxResponse:
        """The devbox view once the reboot started (see `start_reboot`)."""
        await self.start_reboot(principal, devbox_id, spec)
        return await self._views.get(principal, devbox_id, Act.OPERATE)

    async def start_reboot(
        self, principal: Principal, devbox_id: str, spec: MachineSpec | None = None
    ) -> None:
        """Answers at once as `rebooting`; the guest comes back in the background. With a
        new `spec` it is a cold reboot into it (the disk kept, grown if asked). Raises
        NotFound, Conflict, InvalidSpec (a smaller disk), LimitReached."""
        async with self._core.locked(principal, devbox_id, Act.OPERATE) as record:
            require(record, Action.REBOOT)  # a 409 before any size is looked at
            await self._core.has_vm(record)
            async with self._core.admission.guard():
                resized = await self._admit_resize(principal, record, spec)
                await self._core.apply(record, Action.REBOOT, resize=resized)

    async def _admit_resize(
        self, principal: Principal, record: DevboxRecord, spec: MachineSpec | None
    ) -> dict[str, int]:
        """The record's new size columns for a reboot into `spec` (none if it is the same),
        once the host has the memory and the caller the disk quota for it."""
        if spec is None or spec == record.spec:
            return {}
        authorize(
            principal,
            Act.RESIZE,
            user_id=record.user_id,
            org_id=record.org_id,
            devbox_id=record.id,
            resource=("devbox", record.id),
        )
        require_growth(record.disk_mb, spec.disk_mb)
        admission = self._core.admission
        if spec.memory_mb > record.memory_mb:
            await admission.check_memory_growth(
                self._core.backend, spec.memory_mb - record.memory_mb
            )
        if spec.disk_mb > record.disk_mb:
            await admission.check_disk_growth(
                record.user_id, record.org_id, spec.disk_mb - record.disk_mb
            )
        return {"vcpus": spec.vcpus, "memory_mb": spec.memory_mb, "disk_mb": spec.disk_mb}

    async def delete(self, principal: Principal, devbox_id: str) -> None:
        """Only the owner or an org admin. Raises NotFound, PermissionDenied."""
        await self._core.visible(principal, devbox_id, Act.DELETE)
        await self._core.delete(devbox_id)

    async def remove(self, devbox_id: str) -> None:
        """Delete a devbox the service made for its own work (a template's build devbox)."""
        await self._core.delete(devbox_id)

    # record fields

    async def update_metadata(
        self, principal: Principal, devbox_id: str, metadata: dict[str, Any]
    ) -> None:
        """Merged into what is there. Raises PayloadTooLarge past METADATA_MAX_BYTES in total
        (every list response carries it)."""
        async with self._core.locked(principal, devbox_id, Act.CONFIGURE) as record:
            merged = {**record.metadata, **metadata}
            check_metadata_size("devbox", merged)
            await self._core.store.update(devbox_id, metadata=merged)

    async def set_wake_on(
        self, principal: Principal, devbox_id: str, *, ssh: bool | None, http: bool | None
    ) -> None:
        """Whether a paused devbox wakes for SSH / HTTP; None leaves one as it is."""
        async with self._core.locked(principal, devbox_id, Act.CONFIGURE):
            if ssh is not None:
                await self._core.store.update(devbox_id, wake_on_ssh=ssh)
            if http is not None:
                await self._core.store.update(devbox_id, wake_on_http=http)

    async def set_display_name(self, principal: Principal, devbox_id: str, name: str) -> None:
        async with self._core.locked(principal, devbox_id, Act.CONFIGURE) as record:
            await self._core.store.update(
                devbox_id, name=name, metadata={**record.metadata, "display_name": name}
            )


def _settled(record: DevboxRecord | None) -> bool:
    """A new devbox is done starting: ready, failed, or gone."""
    return record is None or record.status in (DevboxStatus.READY, DevboxStatus.ERROR)
