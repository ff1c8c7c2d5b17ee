"""What the devbox services share: the stores, the VM backend, one lock per devbox, the
background task each devbox may have, and how a devbox is recorded and destroyed.

Every change of a devbox's VM happens under that devbox's lock, so two requests (or a request
and a background task) never drive one VM at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

from devbox_service.auth import tokens
from devbox_service.auth.models import Principal
from devbox_service.backends import base as backend_api
from devbox_service.backends.base import InstanceState, MachineSpec, VMBackend
from devbox_service.devboxes.lifecycle import TRANSITIONS, Action, require
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    EventType,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.devboxes.quotas import Admission
from devbox_service.devboxes.records import new_credentials, new_event
from devbox_service.devboxes.snapshot_store import SnapshotStore
from devbox_service.devboxes.store import DevboxStore
from devbox_service.errors import Conflict, Failed, NotFound, Unavailable
from devbox_service.ids import new_id
from devbox_service.secrets.box import SecretBox

log = logging.getLogger("devbox_service.devboxes")

WAIT_RECHECK_SECONDS = 5.0
"""A wait reads the record at least this often (a write by another process bumps nothing)."""

DestroyListener = Callable[[str], Awaitable[None]]
ReadyHook = Callable[[str], Awaitable[None]]
SnapshotKeeper = Callable[[], Awaitable[set[str]]]


class DevboxCore:
    def __init__(
        self,
        store: DevboxStore,
        snapshots: SnapshotStore,
        backend: VMBackend | None,
        secret_box: SecretBox,
        admission: Admission,
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.admission = admission
        self.box = secret_box
        self._backend = backend
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.clock: Callable[[], float] = time.time  # tests move time forward for TTLs
        self._destroy_listeners: list[DestroyListener] = []
        self._required_listeners: set[DestroyListener] = set()
        self.snapshot_keepers: list[SnapshotKeeper] = []
        """Other domains' backend snapshots (template steps): start-up recovery keeps them."""

    @property
    def has_backend(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> VMBackend:
        """The VM backend; `Unavailable` when the service runs without one."""
        if self._backend is None:
            raise Unavailable("this service runs without a VM backend (DEVBOX_VM_BACKEND=none)")
        return self._backend

    # records

    async def record(self, devbox_id: str) -> DevboxRecord:
        record = await self.store.get(devbox_id)
        if record is None:
            raise NotFound.of("devbox", devbox_id)
        return record

    async def visible(self, principal: Principal, devbox_id: str) -> DevboxRecord:
        """The devbox if the caller's organization holds it; 404 (not 403) otherwise."""
        record = await self.store.get(devbox_id)
        if record is None or record.org_id != principal.org_id:
            raise NotFound.of("devbox", devbox_id)
        return record

    @contextlib.asynccontextmanager
    async def locked(self, principal: Principal, devbox_id: str) -> AsyncIterator[DevboxRecord]:
        """The devbox's lock, held, and its record as read under it. Visibility is checked
        first, so requests for unknown ids never add to the lock table."""
        await self.visible(principal, devbox_id)
        async with self.locks[devbox_id]:
            yield await self.visible(principal, devbox_id)

    async def insert(
        self,
        principal: Principal,
        *,
        snapshot_id: str,
        image_id: str | None,
        spec: MachineSpec,
        name: str,
        metadata: dict[str, Any],
        parent_id: str | None,
        created_detail: dict[str, Any],
    ) -> DevboxRecord:
        """A new `provisioning` devbox with fresh SSH gateway credentials (kept sealed; the
        access token is found by its hash) and its first timeline entry."""
        now = time.time()
        credentials = new_credentials()
        record = DevboxRecord(
            id=new_id("devbox"),
            org_id=principal.org_id,
            user_id=principal.user_id,
            name=name,
            status=DevboxStatus.PROVISIONING,
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
            ssh_credentials_sealed=self.box.seal(json.dumps(credentials)),
        )
        event = new_event(record.id, EventType.CREATE, snapshot_id, created_detail)
        token_hash = tokens.hash_secret(credentials["access_token"])
        async with self.store.database.transaction() as tx:
            await self.store.insert(tx, record, event, ssh_token_hash=token_hash)
        self.store.changes.bump()
        return record

    def credentials(self, record: DevboxRecord) -> dict[str, str]:
        assert record.ssh_credentials_sealed is not None
        sealed: dict[str, str] = json.loads(self.box.open_sealed(record.ssh_credentials_sealed))
        return sealed

    async def set_credentials(self, devbox_id: str, credentials: dict[str, str]) -> None:
        """Replace a devbox's gateway credentials (the old ones stop working at once)."""
        await self.store.update(
            devbox_id,
            ssh_credentials_sealed=self.box.seal(json.dumps(credentials)),
            ssh_token_hash=tokens.hash_secret(credentials["access_token"]),
        )

    # VM states the API does not show

    async def bring_back(self, devbox_id: str) -> None:
        """Resume a paused VM, or restore one that idled into standby (processes kept; the
        host must have the memory for it again: LimitReached otherwise)."""
        instance = await self.backend.get_instance(devbox_id)
        if instance.state is InstanceState.RUNNING and await self.vm_alive(devbox_id):
            return  # nothing to bring back
        if instance.state is InstanceState.PAUSED and await self.vm_alive(devbox_id):
            await self.backend.resume(devbox_id)
            return
        await self.wake(devbox_id, instance.spec.memory_mb)

    async def vm_alive(self, devbox_id: str) -> bool:
        """Does the devbox's VM process still run? (A crash is only noticed when asked.)"""
        try:
            await self.backend.stats(devbox_id)
        except backend_api.InvalidState as exc:
            return exc.state != InstanceState.STOPPED
        return True

    async def wake(self, devbox_id: str, memory_mb: int) -> None:
        """Standby restores memory; a VM whose process died boots again from its disk. The
        host must have the memory for it again: LimitReached otherwise."""
        instance = await self.backend.get_instance(devbox_id)
        if instance.state in (InstanceState.RUNNING, InstanceState.PAUSED):
            with contextlib.suppress(backend_api.InvalidState):
                await self.backend.stop(devbox_id)  # a dead process: the backend notices it
        async with self.admission.guard():
            await self.admission.check_memory(self.backend, 1, memory_mb)
            await self.backend.wake(devbox_id)

    async def use_snapshot(self, snapshot_id: str) -> None:
        """A snapshot was used (booted, or found by its digest): its TTL counts from now."""
        snapshot = await self.snapshots.get(snapshot_id)
        if snapshot is not None and snapshot.ttl_seconds is not None:
            await self.snapshots.set_ttl(
                snapshot_id,
                ttl_expire_at=self.clock() + snapshot.ttl_seconds,
                ttl_waiting_for=None,
            )

    # the one way to pause or resume, and to wait for a status

    async def apply(
        self, record: DevboxRecord, action: Action, *, detail: dict[str, Any] | None = None
    ) -> bool:
        """Pause or resume a devbox whose lock the caller holds (`record` read under it): the
        transition table decides (Conflict if it does not fit, False for a no-op), the
        intermediate status is written, the backend does the work, then the final status and
        the timeline event (`detail` names who asked, e.g. a wake on SSH). A failure puts the
        status back as it was and raises."""
        transition = TRANSITIONS[action]
        assert transition.during and transition.after and transition.event
        if not require(record, action):
            return False
        await self.has_vm(record)
        await self.store.update(record.id, status=transition.during)
        try:
            if action is Action.RESUME:
                await self.bring_back(record.id)
            elif action is Action.PAUSE:
                await self.backend.pause(record.id)
            else:
                raise AssertionError(f"{action} is not applied here")
        except BaseException:
            await self.store.update(record.id, status=record.status)
            raise
        event = new_event(record.id, transition.event, detail=detail)
        await self.store.update(record.id, status=transition.after, event=event)
        return True

    async def has_vm(self, record: DevboxRecord) -> None:
        """A devbox in error whose boot failed has no VM to bring back: say what to do."""
        if record.status is DevboxStatus.ERROR:
            try:
                await self.backend.get_instance(record.id)
            except backend_api.NotFound:
                raise Conflict(
                    f"devbox {record.id} has no VM to bring back ({record.error}): delete it "
                    "and create another",
                    state=record.status.value,
                ) from None

    async def wait(
        self, devbox_id: str, until: Callable[[DevboxRecord | None], bool], timeout: float
    ) -> DevboxRecord | None:
        """The devbox's record once `until(record)` holds (None: it is gone), woken by the
        store's change notices rather than polling; the last record read when `timeout`
        seconds pass first (the caller tells which by asking `until` again)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.store.changes.version
            record = await self.store.get(devbox_id)
            left = deadline - time.monotonic()
            if until(record) or left <= 0:
                return record
            await self.store.changes.wait(seen, min(left, WAIT_RECHECK_SECONDS))

    async def touch(self, devbox_id: str) -> None:
        """Someone used the devbox (an API action, SSH, a preview request): its TTL starts
        again. Written only when that moves the expiry noticeably, not on every request."""
        record = await self.store.get(devbox_id)
        if record is None or record.ttl_seconds is None:
            return
        expire_at = self.clock() + record.ttl_seconds
        current = record.ttl_expire_at or 0.0
        if expire_at - current > max(1.0, record.ttl_seconds * 0.05):
            await self.store.update(devbox_id, ttl_expire_at=expire_at)

    async def settle_snapshot(self, snapshot: SnapshotRecord) -> None:
        """A snapshot the backend has written: ready, and a save is its devbox's newest."""
        await self.snapshots.set_status(snapshot.id, SnapshotStatus.READY)
        devbox_id = snapshot.devbox_id
        if snapshot.kind is SnapshotKind.SAVE and devbox_id and await self.store.get(devbox_id):
            detail = {"name": snapshot.name}
            await self.store.update(
                devbox_id,
                current_save_id=snapshot.id,
                event=new_event(devbox_id, EventType.SAVE, snapshot.id, detail),
            )

    async def in_memory(self, devbox_id: str) -> None:
        """Save and branch need the VM process: bring a standby VM back, still paused."""
        if (await self.backend.get_instance(devbox_id)).state is InstanceState.STANDBY:
            await self.backend.wake(devbox_id)
            await self.backend.pause(devbox_id)

    # background work

    def run_in_background(self, devbox_ids: Sequence[str], work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as the devboxes' background task (cancelled if one is deleted)."""
        task = asyncio.create_task(work)
        for devbox_id in devbox_ids:
            self._tasks[devbox_id] = task
            task.add_done_callback(functools.partial(self._forget_task, devbox_id))

    @property
    def busy(self) -> bool:
        """Is background work (a boot, a reboot, a recovery) under way?"""
        return bool(self._tasks)

    def _forget_task(self, devbox_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(devbox_id) is task:
            del self._tasks[devbox_id]

    async def cancel_background(self, devbox_id: str) -> None:
        task = self._tasks.pop(devbox_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def start_boot(
        self, devbox_ids: Sequence[str], snapshot_id: str, after_ready: ReadyHook | None = None
    ) -> None:
        """Restore `snapshot_id` into each devbox in the background; `ready` when the guest
        answers, `error` with the reason (and no VM left behind) when it does not.
        `after_ready(devbox_id)` then runs for each (its failure is logged, not fatal)."""

        async def boot_all() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for devbox_id in devbox_ids:
                    await stack.enter_async_context(self.locks[devbox_id])
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
                            devbox_id, status=DevboxStatus.ERROR, error=f"boot failed: {exc}"
                        )
                    return
                for devbox_id in devbox_ids:
                    await self._grow_as_recorded(devbox_id)
            for devbox_id in devbox_ids if after_ready is not None else ():
                try:
                    await after_ready(devbox_id)  # type: ignore[misc]
                except Exception:
                    log.exception("setting up a new devbox failed", extra={"devbox": devbox_id})

        self.run_in_background(devbox_ids, boot_all())

    async def _grow_as_recorded(self, devbox_id: str) -> None:
        """`ready`, once the disk is as large as recorded (a boot may ask for a larger disk
        than its snapshot's); `error` with the reason, and no VM, if it cannot grow."""
        record = await self.record(devbox_id)
        try:
            await self.backend.grow_disk(devbox_id, record.disk_mb)
        except backend_api.BackendError as exc:
            with contextlib.suppress(backend_api.BackendError):
                await self.backend.delete(devbox_id)
            await self.store.update(
                devbox_id, status=DevboxStatus.ERROR, error=f"the disk did not grow: {exc}"
            )
            return
        await self.store.update(devbox_id, status=DevboxStatus.READY)

    # removal

    def on_destroy(self, listener: DestroyListener, *, required: bool = False) -> None:
        """Call `listener(devbox_id)` before a devbox's VM is removed (to close connections,
        revoke tokens). A `required` one that fails stops the deletion (see `destroy`)."""
        self._destroy_listeners.append(listener)
        if required:
            self._required_listeners.add(listener)

    async def destroy(self, devbox_id: str) -> None:
        """Remove the VM, then the record: a crash between leaves `deleting`, finished at start."""
        for listener in self._destroy_listeners:
            try:
                await listener(devbox_id)
            except Exception as exc:
                log.exception("clean-up before deletion failed", extra={"devbox": devbox_id})
                if listener in self._required_listeners:
                    raise Failed(
                        f"devbox {devbox_id} was not deleted: a required clean-up failed "
                        f"({exc}); it stays `deleting` and is finished at the next start, or "
                        "delete it again"
                    ) from exc
        if self._backend is not None:
            with contextlib.suppress(backend_api.NotFound):
                await self._backend.delete(devbox_id)
        await self.store.delete(devbox_id)
        self.locks.pop(devbox_id, None)

    async def close(self) -> None:
        tasks = {t for t in self._tasks.values() if not t.done()}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
