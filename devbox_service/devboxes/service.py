"""Devbox rules: who sees which devbox, which lifecycle action fits which state, and how each
action drives the VM backend while the record stays true (also across a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import posixpath
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from devbox_service.auth import tokens
from devbox_service.auth.models import Principal
from devbox_service.backends import base as backend_api
from devbox_service.backends.base import InstanceState, SSHEndpoint, VMBackend
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxRefs,
    DevboxResponse,
    DevboxSpec,
    DevboxSSHCredentialsResponse,
    DevboxStatus,
    DevboxSummaryResponse,
    EventRecord,
    HttpService,
    ImageResponse,
    Networking,
    SnapshotRecord,
    SnapshotResponse,
    TimelineEvent,
    UploadResponse,
    WakeOn,
)
from devbox_service.devboxes.store import DevboxStore
from devbox_service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from devbox_service.ids import new_id
from devbox_service.secrets.box import SecretBox

log = logging.getLogger("devbox_service.devboxes")

S = DevboxStatus

# Which states each action may start from; `NO_OP` states answer at once, unchanged.
ALLOWED_FROM: dict[str, set[DevboxStatus]] = {
    "pause": {S.READY},
    "resume": {S.PAUSED},
    "save": {S.READY, S.PAUSED},
    "branch": {S.READY, S.PAUSED},
    "reboot": {S.READY},
    "use": {S.READY},  # upload, tmux, guest commands
}
NO_OP: dict[str, set[DevboxStatus]] = {"pause": {S.PAUSED}, "resume": {S.READY}}
# What a VM found at start-up means for its record (standby shows as paused).
STATUS_OF_INSTANCE = {
    InstanceState.RUNNING: S.READY,
    InstanceState.PAUSED: S.PAUSED,
    InstanceState.STANDBY: S.PAUSED,
}

GUEST_IP = "10.0.2.15"
ALWAYS_WAKES = WakeOn(wake_on_ssh=True, wake_on_http=True)  # a paused devbox wakes on both
UPLOAD_ROOT = "/tmp"
DEFAULT_UPLOAD_DIR = "/tmp/codex-uploads"
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")


class GuestFiles(Protocol):
    """What the service needs from an SSH connection into a guest (an adapter in ssh/)."""

    async def write_file(
        self, endpoint: SSHEndpoint, path: str, data: bytes, mode: int = 0o644
    ) -> None: ...

    async def forget(self, endpoint: SSHEndpoint) -> None: ...


def require(record: DevboxRecord, action: str) -> bool:
    """True when the action must run, False for a harmless no-op; Conflict (409) otherwise."""
    if record.status in NO_OP.get(action, set()):
        return False
    if record.status not in ALLOWED_FROM[action]:
        raise Conflict(
            f"cannot {action} devbox {record.id}: it is {record.status.value}",
            state=record.status.value,
        )
    return True


class DevboxService:
    def __init__(
        self,
        store: DevboxStore,
        backend: VMBackend | None,
        secret_box: SecretBox,
        guests: GuestFiles | None = None,
        *,
        preview_base_url: str = "",
        standby_after: float = 0.0,
    ) -> None:
        self.store = store
        self._standby_after = standby_after
        self._preview_base_url = preview_base_url.rstrip("/")
        self._backend = backend
        self._box = secret_box
        self._guests = guests
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._destroy_listeners: list[Callable[[str], Awaitable[None]]] = []
        self._standby_task: asyncio.Task[None] | None = None

    def on_destroy(self, listener: Callable[[str], Awaitable[None]]) -> None:
        """Call `listener(devbox_id)` before a devbox's VM is removed (to close connections)."""
        self._destroy_listeners.append(listener)

    @property
    def backend(self) -> VMBackend:
        if self._backend is None:
            raise Unavailable("this service runs without a VM backend (DEVBOX_VM_BACKEND=none)")
        return self._backend

    # reading

    async def visible(self, principal: Principal, devbox_id: str) -> DevboxRecord:
        """The devbox if the caller's organization holds it; 404 (not 403) otherwise."""
        record = await self.store.get(devbox_id)
        if record is None or record.org_id != principal.org_id:
            raise NotFound.of("devbox", devbox_id)
        return record

    async def list_summaries(self, principal: Principal) -> list[DevboxSummaryResponse]:
        records = await self.store.list_for_org(principal.org_id)
        events = await self.store.events_for([r.id for r in records])
        services = await self._http_services([r.id for r in records])
        return [summary(r, events[r.id], services[r.id]) for r in records]

    async def list_detailed(self, principal: Principal) -> list[DevboxResponse]:
        records = await self.store.list_for_org(principal.org_id)
        events = await self.store.events_for([r.id for r in records])
        services = await self._http_services([r.id for r in records])
        return [detail(r, events[r.id], services[r.id]) for r in records]

    async def get(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        return await self._detail(await self.visible(principal, devbox_id))

    async def summary(self, principal: Principal, devbox_id: str) -> DevboxSummaryResponse:
        record = await self.visible(principal, devbox_id)
        events = await self.store.events_for([record.id])
        services = await self._http_services([record.id])
        return summary(record, events[record.id], services[record.id])

    async def _detail(self, record: DevboxRecord) -> DevboxResponse:
        events = await self.store.events_for([record.id])
        services = await self._http_services([record.id])
        return detail(record, events[record.id], services[record.id])

    async def _http_services(self, devbox_ids: list[str]) -> dict[str, list[HttpService]]:
        """The exposed services of each devbox, with their preview URLs (see previews/)."""
        rows = await self.store.http_services_for(devbox_ids)
        return {
            devbox_id: [
                HttpService(
                    name=row["name"],
                    port=row["port"],
                    url=f"{self._preview_base_url}/{devbox_id}/{row['name']}/",
                    auth_mode=row["auth_mode"],
                )
                for row in found
            ]
            for devbox_id, found in rows.items()
        }

    # creating

    async def create(
        self,
        principal: Principal,
        snapshot_ref: str,
        *,
        name: str | None,
        metadata: dict[str, Any] | None,
    ) -> DevboxResponse:
        """Record the devbox as provisioning and restore the snapshot in the background."""
        snapshot_id = await self._bootable_snapshot(principal, snapshot_ref)
        snapshot = await self.backend.get_snapshot(snapshot_id)
        record = await self._insert_devbox(
            principal,
            snapshot_id=snapshot_id,
            image_id=snapshot.image_id,
            spec=snapshot.spec,
            name=name or "",
            metadata=metadata or {},
            parent_id=None,
            event=("create", {"name": "created"}),
        )
        self._start_boot([record.id], snapshot_id)
        return await self._detail(record)

    async def _bootable_snapshot(self, principal: Principal, ref: str) -> str:
        images = await self.backend.list_images()
        for image in images:
            if ref in (image.id, image.boot_snapshot_id):
                return image.boot_snapshot_id
        snapshot = await self.store.snapshot(ref)
        if snapshot is not None and snapshot.org_id == principal.org_id:
            if snapshot.status != "ready":
                raise Conflict(f"snapshot {ref} is {snapshot.status}", state=snapshot.status)
            return snapshot.id
        if not images:
            raise Unavailable("no guest image is ready yet; GET /health/ready says when it is")
        raise NotFound.of("snapshot", ref)

    async def _insert_devbox(
        self,
        principal: Principal,
        *,
        snapshot_id: str,
        image_id: str | None,
        spec: backend_api.MachineSpec,
        name: str,
        metadata: dict[str, Any],
        parent_id: str | None,
        event: tuple[str, dict[str, Any]],
    ) -> DevboxRecord:
        now = time.time()
        access_token = "dbxssh_" + secrets.token_hex(16)
        password = secrets.token_urlsafe(24)
        record = DevboxRecord(
            id=new_id("devbox"),
            org_id=principal.org_id,
            user_id=principal.user_id,
            name=name,
            status=S.PROVISIONING,
            base_snapshot_id=snapshot_id,
            image_id=image_id,
            current_save_id=None,
            parent_id=parent_id,
            vcpus=spec.vcpus,
            memory_mb=spec.memory_mb,
            disk_mb=spec.disk_mb,
            metadata=metadata,
            error=None,
            created_at=now,
            updated_at=now,
            ssh_credentials_sealed=self._box.seal(
                json.dumps({"access_token": access_token, "password": password})
            ),
        )
        async with self.store.database.transaction() as tx:
            await self.store.insert(tx, record, ssh_token_hash=tokens.hash_secret(access_token))
            await self.store.insert_event(tx, _event(record.id, event[0], snapshot_id, event[1]))
        return record

    def _start_boot(self, devbox_ids: Sequence[str], snapshot_id: str) -> None:
        async def boot_all() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for devbox_id in devbox_ids:
                    await stack.enter_async_context(self._locks[devbox_id])
                try:
                    await self.backend.branch(snapshot_id, list(devbox_ids))
                except Exception as exc:
                    log.warning(
                        "boot failed", extra={"devboxes": list(devbox_ids), "error": str(exc)}
                    )
                    for devbox_id in devbox_ids:
                        with contextlib.suppress(backend_api.BackendError):
                            await self.backend.delete(devbox_id)
                        await self.store.update(
                            devbox_id, status=S.ERROR, error=f"boot failed: {exc}"
                        )
                    return
                for devbox_id in devbox_ids:
                    await self.store.update(devbox_id, status=S.READY)

        task = asyncio.create_task(boot_all())
        for devbox_id in devbox_ids:
            self._tasks[devbox_id] = task
            task.add_done_callback(functools.partial(self._forget_task, devbox_id))

    def _forget_task(self, devbox_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(devbox_id) is task:
            del self._tasks[devbox_id]

    # lifecycle

    async def pause(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        return await self._transition(principal, devbox_id, "pause", S.PAUSING, S.PAUSED)

    async def resume(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        return await self._transition(principal, devbox_id, "resume", S.RESUMING, S.READY)

    async def reboot(self, principal: Principal, devbox_id: str) -> DevboxResponse:
        """Answers at once as `rebooting`; the guest comes back in the background."""
        async with self._locks[devbox_id]:
            record = await self.visible(principal, devbox_id)
            require(record, "reboot")
            await self._set_status_with_event(record.id, S.REBOOTING, "reboot")

        async def reboot() -> None:
            async with self._locks[devbox_id]:
                try:
                    await self.backend.reboot(devbox_id)
                except backend_api.BackendError as exc:
                    await self.store.update(devbox_id, status=S.ERROR, error=str(exc))
                    return
                await self.store.update(devbox_id, status=S.READY)

        task = asyncio.create_task(reboot())
        self._tasks[devbox_id] = task
        task.add_done_callback(functools.partial(self._forget_task, devbox_id))
        return await self._detail(await self.visible(principal, devbox_id))

    async def _transition(
        self,
        principal: Principal,
        devbox_id: str,
        action: str,
        during: DevboxStatus,
        after: DevboxStatus,
    ) -> DevboxResponse:
        """Pause, or resume (from memory, or from standby on disk)."""
        async with self._locks[devbox_id]:
            record = await self.visible(principal, devbox_id)
            if require(record, action):
                await self.store.update(devbox_id, status=during)
                try:
                    if action == "resume":
                        await self._bring_back(devbox_id)
                    else:
                        await self.backend.pause(devbox_id)
                except backend_api.BackendError as exc:
                    await self.store.update(devbox_id, status=record.status)
                    raise Unavailable(f"{action} failed: {exc.message}") from exc
                await self._set_status_with_event(devbox_id, after, action)
        return await self._detail(await self.visible(principal, devbox_id))

    async def _bring_back(self, devbox_id: str) -> None:
        """Resume a paused VM, or restore one that idled into standby (processes kept)."""
        if (await self.backend.get_instance(devbox_id)).state is InstanceState.STANDBY:
            await self.backend.wake(devbox_id)
        else:
            await self.backend.resume(devbox_id)

    async def _in_memory(self, devbox_id: str) -> None:
        """Save and branch need the VM process: bring a standby VM back, still paused."""
        if (await self.backend.get_instance(devbox_id)).state is InstanceState.STANDBY:
            await self.backend.wake(devbox_id)
            await self.backend.pause(devbox_id)

    def start_policies(self) -> None:
        """Background policies: devboxes paused longer than `standby_after` go to standby
        (memory saved to disk, VM process ended), so idle devboxes cost no memory."""
        if self._backend is not None and self._standby_after > 0 and self._standby_task is None:
            self._standby_task = asyncio.create_task(self._standby_loop())

    async def _standby_loop(self) -> None:
        interval = min(max(self._standby_after / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.standby_idle()
            except Exception:
                log.exception("standby of idle devboxes failed; will try again")

    async def standby_idle(self) -> list[str]:
        """Put every devbox paused for longer than `standby_after` into standby."""
        cutoff = time.time() - self._standby_after
        moved = []
        for record in await self.store.all():
            if record.status is not S.PAUSED or record.updated_at > cutoff:
                continue
            async with self._locks[record.id]:
                current = await self.store.get(record.id)
                if current is None or current.status is not S.PAUSED:
                    continue
                instance = await self.backend.get_instance(record.id)
                if instance.state is not InstanceState.PAUSED:
                    continue
                try:
                    await self.backend.standby(record.id)
                except backend_api.BackendError as exc:
                    log.warning("standby failed", extra={"devbox": record.id, "error": str(exc)})
                    with contextlib.suppress(backend_api.BackendError):
                        await self.backend.pause(record.id)  # a failed standby resumes it
                    continue
                moved.append(record.id)
        return moved

    async def _set_status_with_event(
        self,
        devbox_id: str,
        status: DevboxStatus,
        event: str,
        snapshot_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        async with self.store.database.transaction() as tx:
            await tx.execute(
                "UPDATE devboxes SET status = ?, updated_at = ? WHERE id = ?",
                (status.value, time.time(), devbox_id),
            )
            await self.store.insert_event(
                tx, _event(devbox_id, event, snapshot_id, detail or {"name": event})
            )

    async def save(self, principal: Principal, devbox_id: str, name: str) -> SnapshotResponse:
        """Checkpoint memory and disk; the snapshot is listed as ready only once complete."""
        async with self._locks[devbox_id]:
            record = await self.visible(principal, devbox_id)
            require(record, "save")
            snapshot = await self._checkpoint(principal, record, name or "save", kind="save")
            await self.store.update(devbox_id, current_save_id=snapshot.id)
            async with self.store.database.transaction() as tx:
                await self.store.insert_event(
                    tx, _event(devbox_id, "save", snapshot.id, {"name": snapshot.name})
                )
        return snapshot_response(snapshot)

    async def _checkpoint(
        self, principal: Principal, record: DevboxRecord, name: str, *, kind: str
    ) -> SnapshotRecord:
        snapshot = SnapshotRecord(
            id=new_id("snapshot"),
            org_id=record.org_id,
            user_id=principal.user_id,
            devbox_id=record.id,
            name=name,
            kind=kind,
            status="pending",
            vcpus=record.vcpus,
            memory_mb=record.memory_mb,
            disk_mb=record.disk_mb,
            created_at=time.time(),
        )
        async with self.store.database.transaction() as tx:
            await self.store.insert_snapshot(tx, snapshot)
        try:
            await self._in_memory(record.id)
            await self.backend.save(record.id, snapshot.id)
        except BaseException:
            await self.store.delete_snapshot(snapshot.id)
            raise
        await self.store.set_snapshot_status(snapshot.id, "ready")
        return await self._snapshot_record(snapshot.id)

    async def _snapshot_record(self, snapshot_id: str) -> SnapshotRecord:
        found = await self.store.snapshot(snapshot_id)
        if found is None:
            raise NotFound.of("snapshot", snapshot_id)
        return found

    async def branch(
        self, principal: Principal, devbox_id: str, *, name: str | None, count: int
    ) -> list[DevboxResponse]:
        """Checkpoint the parent, then boot `count` copies of that moment concurrently."""
        async with self._locks[devbox_id]:
            parent = await self.visible(principal, devbox_id)
            require(parent, "branch")
            snapshot = await self._checkpoint(
                principal, parent, name or f"branch of {parent.id}", kind="branch"
            )
            children = []
            for _ in range(count):
                child = await self._insert_devbox(
                    principal,
                    snapshot_id=snapshot.id,
                    image_id=parent.image_id,
                    spec=backend_api.MachineSpec(
                        vcpus=parent.vcpus, memory_mb=parent.memory_mb, disk_mb=parent.disk_mb
                    ),
                    name=name or parent.name,
                    metadata=dict(parent.metadata),
                    parent_id=parent.id,
                    event=("create", {"name": f"branched from {parent.id}"}),
                )
                children.append(child)
                async with self.store.database.transaction() as tx:
                    await self.store.insert_event(
                        tx,
                        _event(
                            parent.id,
                            "branch",
                            snapshot.id,
                            {
                                "name": snapshot.name,
                                "branch_name": name,
                                "branch_instance_id": child.id,
                            },
                        ),
                    )
        self._start_boot([c.id for c in children], snapshot.id)
        return [await self._detail(c) for c in children]

    async def delete(self, principal: Principal, devbox_id: str) -> None:
        record = await self.visible(principal, devbox_id)
        if record.user_id != principal.user_id and not principal.role.manages_org:
            raise PermissionDenied("only the devbox's owner or an org admin may delete it")
        task = self._tasks.pop(devbox_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._locks[devbox_id]:
            await self.store.update(devbox_id, status=S.DELETING)
            await self._destroy(devbox_id)

    async def _destroy(self, devbox_id: str) -> None:
        """Remove the VM, then the record: a crash between leaves `deleting`, finished at start."""
        for listener in self._destroy_listeners:
            with contextlib.suppress(Exception):
                await listener(devbox_id)
        if self._backend is not None:
            with contextlib.suppress(backend_api.NotFound):
                if self._guests is not None:
                    with contextlib.suppress(backend_api.BackendError):
                        await self._guests.forget((await self._backend.get_instance(devbox_id)).ssh)
                await self._backend.delete(devbox_id)
        await self.store.delete(devbox_id)
        self._locks.pop(devbox_id, None)

    async def update_metadata(
        self, principal: Principal, devbox_id: str, metadata: dict[str, Any]
    ) -> None:
        async with self._locks[devbox_id]:
            record = await self.visible(principal, devbox_id)
            await self.store.update(devbox_id, metadata={**record.metadata, **metadata})

    async def set_display_name(self, principal: Principal, devbox_id: str, name: str) -> None:
        async with self._locks[devbox_id]:
            record = await self.visible(principal, devbox_id)
            await self.store.update(
                devbox_id, name=name, metadata={**record.metadata, "display_name": name}
            )

    # SSH

    async def ssh_credentials(
        self, principal: Principal, devbox_id: str
    ) -> DevboxSSHCredentialsResponse:
        record = await self.visible(principal, devbox_id)
        if record.user_id != principal.user_id:
            raise PermissionDenied("only the devbox's owner may read its SSH credentials")
        credentials = self._credentials(record)
        return DevboxSSHCredentialsResponse(
            access_token=credentials["access_token"], password=credentials["password"]
        )

    def _credentials(self, record: DevboxRecord) -> dict[str, str]:
        assert record.ssh_credentials_sealed is not None
        sealed: dict[str, str] = json.loads(self._box.open_sealed(record.ssh_credentials_sealed))
        return sealed

    async def authenticate(self, username: str, password: str) -> str | None:
        """The devbox whose SSH gateway credentials these are, or None."""
        record = await self.store.by_ssh_token_hash(tokens.hash_secret(username))
        if record is None or record.status in (S.DELETING, S.DELETED):
            return None
        expected = self._credentials(record)["password"]
        return record.id if secrets.compare_digest(expected, password) else None

    async def connect_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        """Where the guest's sshd is; a paused devbox is resumed first (wake on SSH, or on
        HTTP when the preview proxy calls with `woken_by="HTTP"`)."""
        record = await self.store.get(devbox_id)
        if record is None:
            raise NotFound.of("devbox", devbox_id)
        if record.status is S.PAUSED:
            async with self._locks[devbox_id]:
                record = await self.store.get(devbox_id)
                if record is not None and record.status is S.PAUSED:
                    await self._bring_back(devbox_id)
                    await self._set_status_with_event(
                        devbox_id, S.READY, "resume", detail={"name": f"resumed by {woken_by}"}
                    )
            record = await self.store.get(devbox_id)
        deadline = time.monotonic() + 120
        while record is not None and record.status in (S.PROVISIONING, S.RESUMING, S.REBOOTING):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
            record = await self.store.get(devbox_id)
        if record is None or record.status is not S.READY:
            state = record.status.value if record else "deleted"
            raise Conflict(f"devbox {devbox_id} is {state}", state=state)
        return (await self.backend.get_instance(devbox_id)).ssh

    # files

    async def upload(
        self,
        principal: Principal,
        devbox_id: str,
        *,
        filename: str,
        data: bytes,
        content_type: str,
        directory: str | None,
        max_bytes: int,
        image_only: bool = False,
    ) -> UploadResponse:
        record = await self.visible(principal, devbox_id)
        require(record, "use")
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"file is {len(data)} bytes; the limit is {max_bytes}")
        name = safe_filename(filename)
        target_dir = safe_upload_dir(directory)
        if image_only and not (
            content_type.startswith("image/") and data.startswith(IMAGE_SIGNATURES)
        ):
            raise InvalidInput("not an image: send a PNG, JPEG, GIF or WebP file", field="file")
        if self._guests is None:
            raise Unavailable("no guest connection adapter is configured")
        path = posixpath.join(target_dir, name)
        endpoint = (await self.backend.get_instance(devbox_id)).ssh
        await self._guests.write_file(endpoint, path, data)
        return UploadResponse(
            path=path,
            filename=name,
            size=len(data),
            content_type=content_type or "application/octet-stream",
        )

    # images and snapshots

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
            for i in await self.backend.list_images()
        ]

    async def snapshots(self, principal: Principal) -> list[SnapshotResponse]:
        return [snapshot_response(s) for s in await self.store.snapshots_for_org(principal.org_id)]

    async def snapshot(self, principal: Principal, snapshot_id: str) -> SnapshotResponse:
        return snapshot_response(await self._visible_snapshot(principal, snapshot_id))

    async def delete_snapshot(self, principal: Principal, snapshot_id: str) -> None:
        """Devboxes booted from the snapshot keep running: the backend keeps what they need."""
        snapshot = await self._visible_snapshot(principal, snapshot_id)
        if snapshot.user_id != principal.user_id and not principal.role.manages_org:
            raise PermissionDenied("only the snapshot's owner or an org admin may delete it")
        with contextlib.suppress(backend_api.NotFound):
            await self.backend.delete_snapshot(snapshot_id)
        await self.store.delete_snapshot(snapshot_id)

    async def _visible_snapshot(self, principal: Principal, snapshot_id: str) -> SnapshotRecord:
        snapshot = await self.store.snapshot(snapshot_id)
        if snapshot is None or snapshot.org_id != principal.org_id:
            raise NotFound.of("snapshot", snapshot_id)
        return snapshot

    # start and stop

    async def recover(self) -> None:
        """After a restart: make every record match the VMs that really exist, finish
        interrupted deletions, and let the backend remove what no record owns."""
        if self._backend is None:
            return
        instances = {i.id: i for i in await self.backend.list_instances()}
        for record in await self.store.all():
            instance = instances.get(record.id)
            if record.status is S.DELETING:
                await self._destroy(record.id)
            elif instance is None:
                if record.status is not S.ERROR:
                    await self.store.update(
                        record.id,
                        status=S.ERROR,
                        error="the VM did not survive a restart of the service",
                    )
            else:
                actual = STATUS_OF_INSTANCE.get(instance.state, record.status)
                if actual is not record.status:  # unchanged records keep their updated_at
                    await self.store.update(record.id, status=actual)
        known_snapshots = {s.id: s for s in await self.backend.list_snapshots()}
        for snapshot in await self.store.all_snapshots():
            if snapshot.id not in known_snapshots:
                await self.store.delete_snapshot(snapshot.id)
            elif snapshot.status == "pending":
                await self.store.set_snapshot_status(snapshot.id, "ready")
        removed = await self.backend.reconcile(
            {r.id for r in await self.store.all()},
            {s.id for s in await self.store.all_snapshots()},
        )
        if removed:
            log.info("removed VM resources no record owns", extra={"removed": removed})

    async def close(self) -> None:
        tasks = {t for t in self._tasks.values() if not t.done()}
        if self._standby_task is not None:
            tasks.add(self._standby_task)
            self._standby_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def safe_filename(filename: str) -> str:
    name = filename.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InvalidInput(
            f"invalid file name {filename!r}: give a plain name without '/'", field="file"
        )
    return name


def safe_upload_dir(directory: str | None) -> str:
    """An absolute directory under /tmp, with no `..` anywhere (rejected, not normalised)."""
    target = directory or DEFAULT_UPLOAD_DIR
    parts = target.split("/")
    if not target.startswith("/") or ".." in parts or "\x00" in target:
        raise InvalidInput(
            f"invalid upload directory {target!r}: use an absolute path under "
            f"{UPLOAD_ROOT} without '..'",
            field="dest_dir",
        )
    normal = posixpath.normpath(target)
    if normal != UPLOAD_ROOT and not normal.startswith(UPLOAD_ROOT + "/"):
        raise InvalidInput(
            f"upload directory {target!r} must be under {UPLOAD_ROOT}", field="dest_dir"
        )
    return normal


def _event(
    devbox_id: str, type_: str, snapshot_id: str | None, detail: dict[str, Any]
) -> EventRecord:
    return EventRecord(
        id=new_id("event"),
        devbox_id=devbox_id,
        type=type_,
        snapshot_id=snapshot_id,
        detail=detail,
        created_at=time.time(),
    )


def timeline_event(event: EventRecord) -> TimelineEvent:
    return TimelineEvent(
        id=event.id,
        type=event.type,
        timestamp=event.created_at,
        name=str(event.detail.get("name", event.type)),
        snapshot_id=event.snapshot_id,
        branch_name=event.detail.get("branch_name"),
        branch_instance_id=event.detail.get("branch_instance_id"),
    )


def snapshot_response(snapshot: SnapshotRecord) -> SnapshotResponse:
    return SnapshotResponse(
        id=snapshot.id,
        created=int(snapshot.created_at),
        instance_id=snapshot.devbox_id or "",
        name=snapshot.name,
        status=snapshot.status,
    )


def _common(record: DevboxRecord, http_services: list[HttpService]) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status.value,
        "created": int(record.created_at),
        "spec": DevboxSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        "refs": DevboxRefs(snapshot_id=record.base_snapshot_id, image_id=record.image_id),
        "networking": Networking(internal_ip=GUEST_IP, http_services=http_services),
        "wake_on": ALWAYS_WAKES,
        "metadata": record.metadata,
        "current_save_id": record.current_save_id,
        "base_snapshot_id": record.base_snapshot_id,
    }


def summary(
    record: DevboxRecord, events: list[EventRecord], http_services: list[HttpService]
) -> DevboxSummaryResponse:
    return DevboxSummaryResponse(
        **_common(record, http_services),
        timeline_count=len(events),
        saves_count=sum(1 for e in events if e.type == "save"),
        branches_count=sum(1 for e in events if e.type == "branch"),
        last_event=timeline_event(events[-1]) if events else None,
    )


def detail(
    record: DevboxRecord, events: list[EventRecord], http_services: list[HttpService]
) -> DevboxResponse:
    return DevboxResponse(
        **_common(record, http_services), timeline=[timeline_event(e) for e in events]
    )
