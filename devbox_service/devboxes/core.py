"""What the devbox services share: the stores, the VM backend, one lock per devbox, the
background task each devbox may have, and how a devbox is recorded and destroyed.

The core is the only writer of a devbox's status (`apply` and a few named siblings, by the
table in `lifecycle`) and the only holder of its lock (`locked`, `held`): every change of a
devbox's VM happens under that lock, so two requests (or a request and a background task)
never drive one VM at once, and no other module can skip the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from devbox_service.auth import tokens
from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize
from devbox_service.backends import base as backend_api
from devbox_service.backends.base import InstanceState, MachineSpec, VMBackend
from devbox_service.devboxes import machines
from devbox_service.devboxes.lifecycle import STATUS_OF_INSTANCE, TRANSITIONS, Action, require
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    EventType,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.devboxes.quotas import Admission
from devbox_service.devboxes.records import new_credentials, new_event, new_record
from devbox_service.devboxes.snapshot_store import SnapshotStore
from devbox_service.devboxes.store import DevboxStore
from devbox_service.devboxes.tasks import BackgroundTasks
from devbox_service.errors import Conflict, DevboxServiceError, Failed, NotFound, Unavailable
from devbox_service.secrets.box import SecretBox

log = logging.getLogger("devbox_service.devboxes")

WAIT_RECHECK_SECONDS = 5.0
"""A wait reads the record at least this often: announcements are wake-ups that can be lost
(a SQLite write by the operator's CLI announces nothing; a PostgreSQL listener may reconnect)."""

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
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.tasks = BackgroundTasks()
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

    async def visible(self, principal: Principal, devbox_id: str, act: Act) -> DevboxRecord:
        """The devbox if the one policy lets the caller do `act` to it: NotFound (not 403)
        when the caller may not see it, PermissionDenied naming who may otherwise."""
        record = await self.store.get(devbox_id)
        if record is None:
            raise NotFound.of("devbox", devbox_id)
        authorize(
            principal,
            act,
            user_id=record.user_id,
            org_id=record.org_id,
            devbox_id=record.id,
            resource=("devbox", devbox_id),
        )
        return record

    @contextlib.asynccontextmanager
    async def locked(
        self, principal: Principal, devbox_id: str, act: Act
    ) -> AsyncIterator[DevboxRecord]:
        """The devbox's lock, held, and its record as read under it. The policy is asked
        first, so requests for unknown ids never add to the lock table."""
        await self.visible(principal, devbox_id, act)
        async with self._locks[devbox_id]:
            yield await self.visible(principal, devbox_id, act)

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
        credentials = new_credentials()
        sealed = self.box.seal(json.dumps(credentials))
        record = new_record(
            principal, snapshot_id, image_id, spec, name, metadata, parent_id, sealed
        )
        event = new_event(record.id, EventType.CREATE, snapshot_id, created_detail)
        token_hash = tokens.hash_secret(credentials["access_token"])
        async with self.store.database.transaction() as tx:
            await self.store.insert(tx, record, event, ssh_token_hash=token_hash)
        return record

    # the one writer of a devbox's status: the transition table in `lifecycle` decides

    @contextlib.asynccontextmanager
    async def held(self, devbox_id: str) -> AsyncIterator[DevboxRecord | None]:
        """`locked` for the service's own work (background passes, wake on SSH): the lock,
        and the record read under it (None when it is gone)."""
        async with self._locks[devbox_id]:
            yield await self.store.get(devbox_id)

    async def apply(
        self,
        record: DevboxRecord,
        action: Action,
        *,
        detail: dict[str, Any] | None = None,
        resize: dict[str, int] | None = None,
    ) -> bool:
        """Carry out `action` on a devbox whose lock the caller holds (`record` read under
        it): the transition table decides (Conflict if it does not fit, False for a no-op),
        the intermediate status is written, the backend does the work, then the final status
        and the timeline event (`detail` names who asked, e.g. a wake on SSH). A failed pause
        or resume puts the status back as it was and raises. A reboot (`resize`: new size
        columns, already admitted) answers once `rebooting` and finishes in the background."""
        if not require(record, action):
            return False
        await self.has_vm(record)
        transition = TRANSITIONS[action]
        if action is Action.REBOOT:
            event, resized = new_event(record.id, EventType.REBOOT), resize or {}
            await self.store.update(record.id, status=transition.during, event=event, **resized)
            self.tasks.run([record.id], self._finish_reboot(record.id))
            return True
        if action in (Action.STANDBY, Action.STOP_VM):
            return await self._standby(record, pause_first=action is Action.STOP_VM)
        if action not in (Action.PAUSE, Action.RESUME):
            raise AssertionError(f"{action} is not applied here")
        await self._switch(record.id, action, record.status, detail)
        return True

    async def _switch(
        self, devbox_id: str, action: Action, before: DevboxStatus, detail: dict[str, Any] | None
    ) -> None:
        """Pause or resume: the one path, also for a resume a restart cut short."""
        transition = TRANSITIONS[action]
        assert transition.during and transition.after and transition.event
        await self.store.update(devbox_id, status=transition.during)
        try:
            if action is Action.RESUME:
                await machines.bring_back(self.backend, self.admission, devbox_id)
            else:
                await self.backend.pause(devbox_id)
        except BaseException:
            await self.store.update(devbox_id, status=before)
            raise
        event = new_event(devbox_id, transition.event, detail=detail)
        await self.store.update(devbox_id, status=transition.after, event=event)

    async def _finish_reboot(self, devbox_id: str) -> None:
        """The guest of a devbox already `rebooting` restarts; then `ready`, or `error` saying
        why (the old guest is gone half-way: there is no status to go back to)."""
        async with self._locks[devbox_id]:
            try:
                record = await self.record(devbox_id)
                await machines.reboot(self.backend, self.admission, devbox_id, record.spec)
            except DevboxServiceError as exc:
                await self.fail(devbox_id, f"the reboot failed: {exc}")
                return
            await self.store.update(devbox_id, status=TRANSITIONS[Action.REBOOT].after)

    async def _resume_again(self, devbox_id: str) -> None:
        """A resume a restart cut short, by the one resume path. Its status before is taken
        as `paused` (what a resume mostly starts from), so a failure leaves it `paused`, as a
        failed resume asked for now does: its owner resumes again, and a VM whose process
        died is marked `error` by the VM watch. The reason is logged."""
        async with self._locks[devbox_id]:
            try:
                await self._switch(devbox_id, Action.RESUME, DevboxStatus.PAUSED, None)
            except DevboxServiceError as exc:
                log.warning(
                    "a resume cut short by a restart failed again",
                    extra={"devbox": devbox_id, "error": str(exc)},
                )

    async def _standby(self, record: DevboxRecord, *, pause_first: bool) -> bool:
        """Memory to disk, process ended; it stays `paused` and wakes as a paused one does.
        False when its VM is in no state for it, or standby failed (it stays paused)."""
        instance = await self.backend.get_instance(record.id)
        if instance.state is InstanceState.RUNNING and pause_first:
            await self.backend.pause(record.id)
            await self.store.update(record.id, status=DevboxStatus.PAUSED)
        elif instance.state is not InstanceState.PAUSED:
            return False
        return await machines.standby(self.backend, record.id)

    async def fail(self, devbox_id: str, reason: str) -> bool:
        """`error` with the reason, for what nobody asked for: a VM that crashed, was lost in
        a restart, did not boot or reboot. The caller holds the lock (or is recovery); False
        when it is in error already (the first reason stays), deleting or gone."""
        record = await self.store.get(devbox_id)
        if record is None or not require(record, Action.FAIL):
            return False
        await self.store.update(devbox_id, status=TRANSITIONS[Action.FAIL].after, error=reason)
        return True

    async def adopt(self, record: DevboxRecord, state: InstanceState) -> None:
        """At start-up, before any request: the VM's state is the truth (one paused behind
        the service's back; standby shows as paused). An unchanged record keeps updated_at."""
        require(record, Action.ADOPT)
        actual = STATUS_OF_INSTANCE.get(state, record.status)
        if actual is not record.status:
            await self.store.update(record.id, status=actual)

    def carry_on(self, record: DevboxRecord) -> None:
        """At start-up: a reboot or resume a restart cut short is finished in the background,
        by the path one asked for now takes."""
        if record.status is DevboxStatus.REBOOTING:
            self.tasks.run([record.id], self._finish_reboot(record.id))
        elif record.status is DevboxStatus.RESUMING:
            self.tasks.run([record.id], self._resume_again(record.id))

    async def delete(self, devbox_id: str) -> None:
        """Its background work cancelled, then under its lock `deleting`, and `destroy`."""
        await self.tasks.cancel(devbox_id)
        async with self._locks[devbox_id]:
            if await self.store.get(devbox_id) is None:
                return
            await self.store.update(devbox_id, status=TRANSITIONS[Action.DELETE].during)
            await self.destroy(devbox_id)

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

    # background work

    @property
    def busy(self) -> bool:
        """Is background work (a boot, a reboot, a recovery) under way?"""
        return self.tasks.busy

    def start_boot(
        self, devbox_ids: Sequence[str], snapshot_id: str, after_ready: ReadyHook | None = None
    ) -> None:
        """Restore `snapshot_id` into each devbox in the background; `ready` when the guest
        answers, `error` with the reason (and no VM left behind) when it does not.
        `after_ready(devbox_id)` then runs for each (its failure is logged, not fatal)."""

        async def boot_all() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for devbox_id in devbox_ids:
                    await stack.enter_async_context(self._locks[devbox_id])
                sizes = {i: (await self.record(i)).disk_mb for i in devbox_ids}
                failed = await machines.boot(self.backend, snapshot_id, sizes)
                for devbox_id in devbox_ids:
                    if devbox_id in failed:
                        await self.fail(devbox_id, failed[devbox_id])
                    else:
                        await self.store.update(devbox_id, status=DevboxStatus.READY)
            for devbox_id in devbox_ids if after_ready is not None else ():
                try:
                    await after_ready(devbox_id)  # type: ignore[misc]
                except Exception:
                    log.exception("setting up a new devbox failed", extra={"devbox": devbox_id})

        self.tasks.run(devbox_ids, boot_all())

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
        self._locks.pop(devbox_id, None)

    async def close(self) -> None:
        await self.tasks.close()
