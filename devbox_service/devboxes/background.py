"""Work no request waits for: making records match the VMs after a restart, and moving
devboxes paused for long into standby (memory saved to disk, no VM process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from devbox_service.backends import base as backend_api
from devbox_service.backends.base import InstanceState
from devbox_service.devboxes import machines
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.lifecycle import Action
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.errors import DevboxServiceError, Failed

log = logging.getLogger("devbox_service.devboxes")

LOST_VM = "the VM did not survive a restart of the service"
CRASHED = (
    "the VM process ended unexpectedly (it crashed or was killed): resume or reboot starts it "
    "again from its disk (what ran in its memory is lost)"
)
WATCH_INTERVAL = 5.0
TTL_INTERVAL = 1.0


async def recover(core: DevboxCore) -> None:
    """After a restart: make every record match the VMs that really exist, and finish the
    work that was accepted. Statuses and pending snapshots are the record of intent, written
    before the caller was answered: a `provisioning` devbox is booted (create, branch), a
    `rebooting` one rebooted, a `resuming` one resumed (by the core's one resume path: see
    `DevboxCore.carry_on`), a `deleting` one deleted, and a pending save written again from
    its VM. Then the backend removes what no record owns. Every status is the core's to
    write; nothing else runs yet, so no lock is taken."""
    if not core.has_backend:
        return
    backend = core.backend
    instances = {i.id: i for i in await backend.list_instances()}
    known_snapshots = {s.id for s in await backend.list_snapshots()}
    known_snapshots |= {i.boot_snapshot_id for i in await backend.list_images()}
    unfinished: dict[str, list[str]] = {}  # snapshot id -> devboxes whose boot was cut short
    redo: list[tuple[str, Coroutine[Any, Any, None]]] = []
    carried: list[DevboxRecord] = []  # a reboot or resume under way
    for record in await core.store.all():
        instance = instances.get(record.id)
        if (
            record.status is DevboxStatus.PROVISIONING
            and instance is not None
            and (instance.state is InstanceState.STOPPED)
        ):  # the restore died half-way: start it over
            await backend.delete(record.id)
            instance = None
        if (
            instance is None
            and record.status is DevboxStatus.PROVISIONING
            and record.base_snapshot_id is not None
            and await _bootable(backend, record.base_snapshot_id, known_snapshots)
        ):
            # accepted (answered 200) but the restore never finished: finish it now
            unfinished.setdefault(record.base_snapshot_id, []).append(record.id)
        elif record.status is DevboxStatus.DELETING:
            try:
                await core.destroy(record.id)
            except Failed as exc:  # stays `deleting`: tried again at the next start
                log.warning("an interrupted deletion failed again: %s", exc.message)
        elif instance is None:
            await core.fail(record.id, LOST_VM)
        elif record.status in (DevboxStatus.REBOOTING, DevboxStatus.RESUMING):
            carried.append(record)
        else:
            await core.adopt(record, instance.state)
    for snapshot in await core.snapshots.all():
        if snapshot.status is not SnapshotStatus.PENDING:
            if snapshot.id not in known_snapshots:
                await core.snapshots.delete(snapshot.id)
        elif snapshot.id in known_snapshots:  # written, not yet recorded as such
            await core.settle_snapshot(snapshot)
        elif snapshot.devbox_id in instances and snapshot.kind is SnapshotKind.SAVE:
            redo.append((snapshot.devbox_id, complete_save(core, snapshot)))
        else:  # a branch's checkpoint no child was recorded for, or its VM is gone
            await core.snapshots.delete(snapshot.id)
    kept = {s.id for s in await core.snapshots.all()}
    for keeper in core.snapshot_keepers:
        kept |= await keeper()
    removed = await backend.reconcile({r.id for r in await core.store.all()}, kept)
    if removed:
        log.info("removed VM resources no record owns", extra={"removed": removed})
    for snapshot_id, devbox_ids in unfinished.items():
        log.info("finishing interrupted boots", extra={"devboxes": devbox_ids})
        core.start_boot(devbox_ids, snapshot_id)
    for record in carried:
        log.info("finishing interrupted work", extra={"devbox_id": record.id})
        core.carry_on(record)
    for devbox_id, work in redo:
        log.info("finishing interrupted work", extra={"devbox_id": devbox_id})
        core.tasks.run([devbox_id], work)


async def complete_save(core: DevboxCore, snapshot: SnapshotRecord) -> None:
    """A save a restart cut short, written again from the running VM; the snapshot
    record goes if that cannot be done (the caller was never told it was saved)."""
    assert snapshot.devbox_id is not None
    async with core.held(snapshot.devbox_id):
        try:
            await machines.in_memory(core.backend, snapshot.devbox_id)
            await core.backend.save(snapshot.devbox_id, snapshot.id)
        except DevboxServiceError as exc:
            log.warning(
                "an interrupted save could not be finished: %s",
                exc,
                extra={"snapshot_id": snapshot.id},
            )
            await core.snapshots.delete(snapshot.id)
            return
        await core.settle_snapshot(snapshot)


async def _bootable(backend: backend_api.VMBackend, snapshot_id: str, known: set[str]) -> bool:
    """Known to the backend: its snapshots, images, and image boot snapshots of any size."""
    if snapshot_id in known:
        return True
    try:
        await backend.get_snapshot(snapshot_id)
    except backend_api.BackendError:
        return False
    return True


class Periodic:
    """A pass over the devboxes every `interval` seconds while the service runs (none
    without a VM backend, or with an interval of 0); a failed pass is logged and retried."""

    what = "a background pass"

    def __init__(self, core: DevboxCore, interval: float) -> None:
        self._core = core
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._core.has_backend and self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("%s failed; will try again", self.what)

    async def run_once(self) -> object:
        raise NotImplementedError


class StandbyPolicy(Periodic):
    """Devboxes paused longer than `after` seconds go to standby, so idle devboxes cost no
    memory; resume, SSH and previews bring them back with their processes."""

    what = "standby of idle devboxes"

    def __init__(self, core: DevboxCore, after: float) -> None:
        super().__init__(core, min(max(after / 4, 0.25), 30.0) if after > 0 else 0)
        self._after = after

    async def run_once(self) -> list[str]:
        return await self.standby_idle()

    async def standby_idle(self) -> list[str]:
        """Put every devbox paused for longer than `after` into standby; the ids moved."""
        cutoff = time.time() - self._after
        moved = []
        for record in await self._core.store.all():
            if record.status is not DevboxStatus.PAUSED or record.updated_at > cutoff:
                continue
            if await standby(self._core, record.id, pause_first=False):
                moved.append(record.id)
        return moved


async def standby_all(core: DevboxCore) -> list[DevboxRecord]:
    """Every ready or paused devbox to standby, for an operator ending the VMs on purpose
    (`devbox-service stop-vms`); the ones moved."""
    return [r for r in await core.store.all() if await standby(core, r.id, pause_first=True)]


async def standby(core: DevboxCore, devbox_id: str, *, pause_first: bool) -> bool:
    """Save a paused devbox's VM (a ready one's too, paused first, if `pause_first`) to disk
    and end its process; it stays `paused` and wakes as a paused one does. False when it was
    in no such state; a failed standby leaves it paused, with its process."""
    async with core.held(devbox_id) as current:
        if current is None:
            return False
        return await core.apply(current, Action.STOP_VM if pause_first else Action.STANDBY)


class VmWatch(Periodic):
    """Notices a VM whose process died under a running or paused devbox (a crash, an OOM
    kill) and says so: the devbox turns `error` with the reason, instead of claiming `ready`."""

    what = "checking VM processes"

    def __init__(self, core: DevboxCore, interval: float = WATCH_INTERVAL) -> None:
        super().__init__(core, interval)

    async def run_once(self) -> list[str]:
        return await self.check()

    async def check(self) -> list[str]:
        """The ids of devboxes found without their VM process (now `error`)."""
        crashed = []
        for record in await self._core.store.all():
            if record.status not in (DevboxStatus.READY, DevboxStatus.PAUSED):
                continue
            async with self._core.held(record.id) as current:
                if current is None or current.status not in (
                    DevboxStatus.READY,
                    DevboxStatus.PAUSED,
                ):
                    continue
                if not await machines.vm_gone(self._core.backend, record.id):
                    continue
                await self._core.fail(record.id, CRASHED)
                log.warning("a devbox's VM process is gone", extra={"devbox": record.id})
                crashed.append(record.id)
        return crashed


class GarbageCollector(Periodic):
    """The backend's files nothing references (left by crashes, deleted snapshots, image
    builds of older recipes), removed every `interval` seconds and on an operator's request."""

    what = "garbage collection"

    def __init__(self, core: DevboxCore, interval: float) -> None:
        super().__init__(core, interval)
        self._one_at_a_time = asyncio.Lock()

    async def run_once(self) -> backend_api.GarbageReport:
        async with self._one_at_a_time:
            report = await self._core.backend.collect_garbage()
        if report.removed:
            log.info(
                "garbage collected",
                extra={"files": len(report.removed), "freed_bytes": report.freed_bytes},
            )
        return report


class TtlReaper(Periodic):
    """What is idle past its TTL is dealt with by `expire(now)`: devboxes paused or stopped
    as each one's `ttl_action` says, snapshots nothing depends on reclaimed."""

    what = "TTLs"

    def __init__(
        self,
        core: DevboxCore,
        expire: Callable[[float], Awaitable[list[str]]],
        interval: float = TTL_INTERVAL,
    ) -> None:
        super().__init__(core, interval)
        self._expire = expire

    async def run_once(self) -> list[str]:
        return await self._expire(self._core.clock())
