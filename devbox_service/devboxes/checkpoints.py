"""Saved moments of devboxes: save (memory + disk), branch (copies of a running devbox), the
snapshots an organization holds and the images devboxes start from."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize
from devbox_service.backends import base as backend_api
from devbox_service.backends.base import MachineSpec
from devbox_service.devboxes import machines
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.lifecycle import Action, require
from devbox_service.devboxes.models import (
    DevboxRecord,
    EventType,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.devboxes.quotas import Admission
from devbox_service.devboxes.records import check_metadata_size, new_event
from devbox_service.devboxes.schemas import DevboxResponse, ImageResponse, SnapshotResponse
from devbox_service.devboxes.sizes import MIN_MEMORY_MB
from devbox_service.devboxes.views import DevboxViews, snapshot_response
from devbox_service.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from devbox_service.ids import new_id

DEFAULT_IMAGE = "default"
DEFAULT_IMAGE_NAMES = (DEFAULT_IMAGE, "morphvm-minimal")
"""What names the image marked `default` wherever an image or snapshot id is taken: the image
list's own word, and the name Morph's SDK and docs use."""


BOOT_MEMORY_SIZES = tuple(MIN_MEMORY_MB * 2**k for k in range(12))
"""Memory sizes an image boots in (128 MB doubling): a fixed list, so the boot snapshots a
host keeps per size are bounded whatever callers ask."""


class CheckpointService:
    def __init__(self, core: DevboxCore, views: DevboxViews) -> None:
        self._core = core
        self._views = views

    async def save(self, principal: Principal, devbox_id: str, name: str) -> SnapshotResponse:
        """Checkpoint memory and disk; answers once the snapshot is ready (clients never poll
        a snapshot)."""
        async with self._core.locked(principal, devbox_id, Act.SAVE) as record:
            require(record, Action.SAVE)
            async with self._core.admission.guard():
                await self._core.admission.check_snapshot(principal)
                snapshot = await self._checkpoint(
                    principal, record, name or "save", SnapshotKind.SAVE
                )
        return snapshot_response(snapshot)

    async def branch(
        self, principal: Principal, devbox_id: str, *, name: str | None, count: int
    ) -> list[DevboxResponse]:
        """Checkpoint the parent, then boot `count` copies of that moment concurrently."""
        async with (
            self._core.locked(principal, devbox_id, Act.BRANCH) as parent,
            self._admitted() as admit,
        ):
            require(parent, Action.BRANCH)
            spec = MachineSpec(
                vcpus=parent.vcpus, memory_mb=parent.memory_mb, disk_mb=parent.disk_mb
            )
            await admit.check_snapshot(principal)
            await admit.check_devboxes(principal, count, spec, self._core.backend)
            snapshot = await self._checkpoint(
                principal, parent, name or f"branch of {parent.id}", SnapshotKind.BRANCH
            )
            children = []
            for _ in range(count):
                child = await self._core.insert(
                    principal,
                    snapshot_id=snapshot.id,
                    image_id=parent.image_id,
                    spec=spec,
                    name=name or parent.name,
                    metadata=dict(parent.metadata),
                    parent_id=parent.id,
                    created_detail={"name": f"branched from {parent.id}"},
                )
                children.append(child)
                detail = {"name": snapshot.name, "branch_name": name}
                await self._core.store.add_event(
                    new_event(
                        parent.id,
                        EventType.BRANCH,
                        snapshot.id,
                        {**detail, "branch_instance_id": child.id},
                    )
                )
        self._core.start_boot([c.id for c in children], snapshot.id)
        return await self._views.details(children)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[Admission]:
        """The admission checks, held until what they admitted is recorded."""
        async with self._core.admission.guard():
            yield self._core.admission

    async def _checkpoint(
        self, principal: Principal, record: DevboxRecord, name: str, kind: SnapshotKind
    ) -> SnapshotRecord:
        """The snapshot is recorded `pending` before the backend writes it and removed if
        that fails, so no file is ever without a record (start-up settles the rest)."""
        snapshot = SnapshotRecord(
            id=new_id("snapshot"),
            org_id=record.org_id,
            user_id=principal.user_id,
            devbox_id=record.id,
            name=name,
            kind=kind,
            status=SnapshotStatus.PENDING,
            vcpus=record.vcpus,
            memory_mb=record.memory_mb,
            disk_mb=record.disk_mb,
            created_at=time.time(),
        )
        await self._core.snapshots.insert(snapshot)
        try:
            await machines.in_memory(self._core.backend, record.id)
            await self._core.backend.save(record.id, snapshot.id)
        except BaseException:
            await self._core.snapshots.delete(snapshot.id)
            raise
        await self._core.settle_snapshot(snapshot)
        return await self._snapshot(snapshot.id)

    async def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        found = await self._core.snapshots.get(snapshot_id)
        if found is None:
            raise NotFound.of("snapshot", snapshot_id)
        return found

    async def save_unlisted(self, devbox_id: str) -> backend_api.SnapshotInfo:
        """A checkpoint no user lists (a template step's), counted toward the devbox's
        organization's snapshot limit: its owner keeps the id, and must register it with
        `core.snapshot_keepers` so start-up recovery keeps it. Raises LimitReached."""
        async with self._core.held(devbox_id) as record:
            if record is None:
                raise NotFound.of("devbox", devbox_id)
            async with self._core.admission.guard():
                await self._core.admission.check_unlisted_snapshot(record.org_id)
                await machines.in_memory(self._core.backend, devbox_id)
                return await self._core.backend.save(devbox_id, new_id("snapshot"))

    async def room_for_unlisted(self, org_id: str) -> None:
        """Raises LimitReached when the organization may hold no more snapshots (before a
        build starts, so it is refused with 429 rather than failing at its first step)."""
        await self._core.admission.check_unlisted_snapshot(org_id)

    async def delete_unlisted(self, snapshot_id: str) -> None:
        with contextlib.suppress(backend_api.NotFound):
            await self._core.backend.delete_snapshot(snapshot_id)

    async def snapshot_info(self, snapshot_id: str) -> backend_api.SnapshotInfo:
        return await self._core.backend.get_snapshot(snapshot_id)

    async def bootable(self, principal: Principal, ref: str) -> backend_api.SnapshotInfo:
        """What `snapshot_id=` names: an image (`default` or Morph's `morphvm-minimal` for the
        one marked default), its boot snapshot, or a ready snapshot of the caller's
        organization the policy lets the caller boot (a saved snapshot holds its owner's
        memory). Raises NotFound, PermissionDenied, Conflict (not ready), Unavailable."""
        return await self.bootable_in(principal.org_id, ref, principal)

    async def bootable_in(
        self, org_id: str, ref: str, principal: Principal | None = None
    ) -> backend_api.SnapshotInfo:
        """`bootable` for the service's own work (a template of `org_id`) when `principal`
        is None. A listed snapshot is looked up (and the policy asked) before the backend, so
        the answer to a caller who may not boot it never depends on the VMs."""
        listed = await self._core.snapshots.get(ref)
        if listed is not None and listed.org_id == org_id:
            if principal is not None:
                await self._visible(principal, listed.id, Act.SNAPSHOT_BOOT)
            if listed.status is not SnapshotStatus.READY:
                raise Conflict(
                    f"snapshot {ref} is {listed.status.value}", state=listed.status.value
                )
            return await self._core.backend.get_snapshot(listed.id)
        if listed is not None and principal is not None:
            await self._visible(principal, listed.id, Act.SNAPSHOT_BOOT)  # NotFound
        images = await self._core.backend.list_images()
        snapshot_id = next(
            (
                i.boot_snapshot_id
                for i in images
                if ref in (i.id, i.boot_snapshot_id) or (i.default and ref in DEFAULT_IMAGE_NAMES)
            ),
            None,
        )
        if snapshot_id is None:
            if not images:
                raise Unavailable("no guest image is ready yet; GET /health/ready says when it is")
            raise NotFound.of("snapshot", ref)
        return await self._core.backend.get_snapshot(snapshot_id)

    async def in_size(
        self, principal: Principal, snapshot: backend_api.SnapshotInfo, spec: MachineSpec
    ) -> backend_api.SnapshotInfo:
        """What to boot for `snapshot` in `spec`; a disk larger than the snapshot's is grown
        after the boot. An image boots with any CPU count and a memory size from a fixed list
        (its boot snapshot for that size, made once: admitted first, as the devbox will be),
        so callers cannot make the host keep a boot snapshot per size they invent. A saved
        snapshot resumes with the CPUs and memory it was saved with. Raises InvalidSpec,
        LimitReached."""
        at_its_disk = msgspec.structs.replace(spec, disk_mb=snapshot.spec.disk_mb)
        if at_its_disk == snapshot.spec:
            return snapshot
        backend = self._core.backend
        images = await backend.list_images()
        if any(i.boot_snapshot_id == snapshot.id for i in images):
            if spec.memory_mb not in BOOT_MEMORY_SIZES:
                sizes = ", ".join(str(m) for m in BOOT_MEMORY_SIZES)
                raise InvalidSpec(
                    f"memory must be one of {sizes} (MB) for an image: each size keeps a boot "
                    "snapshot on the host",
                    loc=["body", "memory"],
                )
            await self._core.admission.check_devboxes(principal, 1, spec, backend)
            return await backend.image_snapshot(snapshot.image_id, at_its_disk)
        for field, asked, saved in (
            ("vcpus", spec.vcpus, snapshot.spec.vcpus),
            ("memory", spec.memory_mb, snapshot.spec.memory_mb),
        ):
            if asked != saved:
                raise InvalidSpec(
                    f"{field} must be {saved} or left out: a snapshot resumes with the CPUs "
                    "and memory it was saved with (boot an image for another size)",
                    loc=["body", field],
                )
        return snapshot

    # listing

    async def images(self) -> list[ImageResponse]:
        return [
            ImageResponse(
                id=i.id,
                name=i.name,
                description=i.description,
                boot_snapshot_id=i.boot_snapshot_id,
                default=i.default,
                created=int(i.created_at),
            )
            for i in await self._core.backend.list_images()
        ]

    async def snapshots(self, principal: Principal) -> list[SnapshotResponse]:
        return [snapshot_response(s) for s in await self._core.snapshots.for_org(principal.org_id)]

    async def snapshot(self, principal: Principal, snapshot_id: str) -> SnapshotResponse:
        return snapshot_response(await self._visible(principal, snapshot_id, Act.SNAPSHOT_VIEW))

    async def delete_snapshot(self, principal: Principal, snapshot_id: str) -> None:
        """Devboxes booted from the snapshot keep running: the backend keeps what they need."""
        await self._visible(principal, snapshot_id, Act.SNAPSHOT_DELETE)
        with contextlib.suppress(backend_api.NotFound):
            await self._core.backend.delete_snapshot(snapshot_id)
        await self._core.snapshots.delete(snapshot_id)

    async def use_snapshot(self, snapshot_id: str) -> None:
        """A snapshot was used (booted, or found by its digest): its TTL counts from now."""
        snapshot = await self._core.snapshots.get(snapshot_id)
        if snapshot is not None and snapshot.ttl_seconds is not None:
            await self._core.snapshots.set_ttl(
                snapshot_id,
                ttl_expire_at=self._core.clock() + snapshot.ttl_seconds,
                ttl_waiting_for=None,
            )

    async def count_all(self) -> int:
        """Snapshots of every organization (for the metrics)."""
        return len(await self._core.snapshots.all())

    # records, for the VM primitives API

    async def records(self, principal: Principal) -> list[SnapshotRecord]:
        return await self._core.snapshots.for_org(principal.org_id)

    async def record(self, principal: Principal, snapshot_id: str) -> SnapshotRecord:
        """Raises NotFound (also for other organizations' snapshots)."""
        return await self._visible(principal, snapshot_id, Act.SNAPSHOT_VIEW)

    async def by_digest(self, principal: Principal, digest: str) -> SnapshotRecord | None:
        """The organization's ready snapshot with this digest (another org's never shows);
        finding it is a use (its TTL counts from now)."""
        found = await self._core.snapshots.by_digest(principal.org_id, digest)
        if found is None:
            return None
        await self.use_snapshot(found.id)
        return await self._core.snapshots.get(found.id)

    async def set_ttl(self, principal: Principal, snapshot_id: str, seconds: int | None) -> None:
        """Reclaim the snapshot after `seconds` without use (None: keep it). Raises NotFound,
        PermissionDenied (a TTL can delete it: the same people as DELETE)."""
        await self._visible(principal, snapshot_id, Act.SNAPSHOT_EDIT)
        expire_at = None if seconds is None else self._core.clock() + seconds
        await self._core.snapshots.set_ttl(
            snapshot_id, ttl_seconds=seconds, ttl_expire_at=expire_at, ttl_waiting_for=None
        )

    async def expire_snapshots(self, now: float) -> list[str]:
        """Reclaim every snapshot unused past its TTL that nothing depends on; one that
        something still needs waits, and says what (`ttl_waiting_for`). The ids reclaimed.

        A devbox started from it, or a template's cached step, holds it. A snapshot saved
        later in the same lineage does not: the backend keeps every disk layer a snapshot or
        a VM uses until nothing does, so reclaiming a parent never breaks its children."""
        expired = await self._core.snapshots.ttl_expired(now)
        if not expired:
            return []
        devboxes = await self._core.store.all()
        kept: set[str] = set()
        for keeper in self._core.snapshot_keepers:
            kept |= await keeper()
        reclaimed = []
        for snapshot in expired:
            started = next((d.id for d in devboxes if d.base_snapshot_id == snapshot.id), None)
            reason = (
                f"devbox {started} was started from it"
                if started
                else "a template's cached build step uses it"
                if snapshot.id in kept
                else None
            )
            if reason is not None:
                if reason != snapshot.ttl_waiting_for:
                    await self._core.snapshots.set_ttl(snapshot.id, ttl_waiting_for=reason)
                continue
            with contextlib.suppress(backend_api.NotFound):
                await self._core.backend.delete_snapshot(snapshot.id)
            await self._core.snapshots.delete(snapshot.id)
            reclaimed.append(snapshot.id)
        return reclaimed

    async def label(
        self,
        principal: Principal,
        snapshot_id: str,
        *,
        digest: str | None,
        metadata: dict[str, str],
    ) -> SnapshotRecord:
        """Set the snapshot's digest and replace its metadata. Raises NotFound."""
        await self._visible(principal, snapshot_id, Act.SNAPSHOT_EDIT)
        check_metadata_size("snapshot", metadata)
        await self._core.snapshots.label(snapshot_id, digest, metadata)
        return await self._visible(principal, snapshot_id, Act.SNAPSHOT_VIEW)

    async def image_of(self, snapshot_id: str) -> str:
        """The image a snapshot's disk descends from ('' when the backend lost it)."""
        try:
            return (await self._core.backend.get_snapshot(snapshot_id)).image_id
        except backend_api.NotFound:
            return ""

    async def _visible(self, principal: Principal, snapshot_id: str, act: Act) -> SnapshotRecord:
        """The snapshot if the one policy lets the caller do `act` to it (NotFound for
        another organization's)."""
        snapshot = await self._core.snapshots.get(snapshot_id)
        if snapshot is None:
            raise NotFound.of("snapshot", snapshot_id)
        authorize(
            principal,
            act,
            user_id=snapshot.user_id,
            org_id=snapshot.org_id,
            devbox_id=snapshot.devbox_id,  # an agent token relates to its devbox's snapshots
            resource=("snapshot", snapshot_id),
        )
        return snapshot
