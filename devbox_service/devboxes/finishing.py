"""Work already accepted, finished: a reboot or a resume whose devbox is `rebooting` or
`resuming`, a save recorded `pending`. Run in the background after the request was answered,
and again after a restart of the service (statuses are the record of intent)."""

from __future__ import annotations

import logging

from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.models import DevboxStatus, EventType, SnapshotRecord
from devbox_service.devboxes.records import new_event
from devbox_service.errors import DevboxServiceError

log = logging.getLogger("devbox_service.devboxes")


async def complete_reboot(core: DevboxCore, devbox_id: str, memory_mb: int) -> None:
    """The reboot of a devbox already `rebooting`: the guest restarts (a VM whose
    process died boots again from its disk); then `ready`, or `error` saying why."""
    async with core.locks[devbox_id]:
        try:
            record = await core.record(devbox_id)
            instance = await core.backend.get_instance(devbox_id)
            if instance.spec != record.spec:  # a reboot into a new size
                await core.backend.reboot_into(devbox_id, record.spec)
            elif await core.vm_alive(devbox_id):
                await core.backend.reboot(devbox_id)
            else:
                await core.wake(devbox_id, memory_mb)
        except DevboxServiceError as exc:
            await core.store.update(
                devbox_id, status=DevboxStatus.ERROR, error=f"the reboot failed: {exc}"
            )
            return
        await core.store.update(devbox_id, status=DevboxStatus.READY)


async def complete_resume(core: DevboxCore, devbox_id: str) -> None:
    """A resume a restart cut short: the VM runs again, or the devbox says why not."""
    async with core.locks[devbox_id]:
        try:
            await core.bring_back(devbox_id)
        except DevboxServiceError as exc:
            await core.store.update(
                devbox_id,
                status=DevboxStatus.ERROR,
                error=f"a resume cut short by a restart of the service failed: {exc}; "
                "resume or reboot it again",
            )
            return
        await core.store.update(
            devbox_id, status=DevboxStatus.READY, event=new_event(devbox_id, EventType.RESUME)
        )


async def complete_save(core: DevboxCore, snapshot: SnapshotRecord) -> None:
    """A save a restart cut short, written again from the running VM; the snapshot
    record goes if that cannot be done (the caller was never told it was saved)."""
    assert snapshot.devbox_id is not None
    async with core.locks[snapshot.devbox_id]:
        try:
            await core.in_memory(snapshot.devbox_id)
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
