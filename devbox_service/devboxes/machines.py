"""What the core asks of a devbox's VM beyond one backend call: bring it back (from memory,
standby or a dead process), reboot it, put it to standby, tell a crashed one. None of it
writes a record: `DevboxCore` does that around these (split out to keep the core short)."""

from __future__ import annotations

import contextlib
import logging

from devbox_service.backends import base as backend_api
from devbox_service.backends.base import InstanceState, MachineSpec, VMBackend
from devbox_service.devboxes.quotas import Admission

log = logging.getLogger("devbox_service.devboxes")


async def vm_alive(backend: VMBackend, devbox_id: str) -> bool:
    """Does the devbox's VM process still run? (A crash is only noticed when asked.)"""
    try:
        await backend.stats(devbox_id)
    except backend_api.InvalidState as exc:
        return exc.state != InstanceState.STOPPED
    return True


async def vm_gone(backend: VMBackend, devbox_id: str) -> bool:
    """Has a running or paused devbox lost its VM, or its VM process (a crash, an OOM kill)?"""
    try:
        instance = await backend.get_instance(devbox_id)
    except backend_api.NotFound:
        return True
    if instance.state not in (InstanceState.RUNNING, InstanceState.PAUSED):
        return False  # standby, or work under way: no process to lose
    return not await vm_alive(backend, devbox_id)


async def wake(backend: VMBackend, admission: Admission, devbox_id: str, memory_mb: int) -> None:
    """Standby restores memory; a VM whose process died boots again from its disk. The
    host must have the memory for it again: LimitReached otherwise."""
    instance = await backend.get_instance(devbox_id)
    if instance.state in (InstanceState.RUNNING, InstanceState.PAUSED):
        with contextlib.suppress(backend_api.InvalidState):
            await backend.stop(devbox_id)  # a dead process: the backend notices it
    async with admission.guard():
        await admission.check_memory(backend, 1, memory_mb)
        await backend.wake(devbox_id)


async def bring_back(backend: VMBackend, admission: Admission, devbox_id: str) -> None:
    """Resume a paused VM, or restore one that idled into standby (processes kept; the
    host must have the memory for it again: LimitReached otherwise)."""
    instance = await backend.get_instance(devbox_id)
    if instance.state is InstanceState.RUNNING and await vm_alive(backend, devbox_id):
        return  # nothing to bring back
    if instance.state is InstanceState.PAUSED and await vm_alive(backend, devbox_id):
        await backend.resume(devbox_id)
        return
    await wake(backend, admission, devbox_id, instance.spec.memory_mb)


async def reboot(
    backend: VMBackend, admission: Admission, devbox_id: str, spec: MachineSpec
) -> None:
    """The guest restarts: into `spec` if that is a new size, from its disk if the VM
    process died."""
    instance = await backend.get_instance(devbox_id)
    if instance.spec != spec:  # a reboot into a new size
        await backend.reboot_into(devbox_id, spec)
    elif await vm_alive(backend, devbox_id):
        await backend.reboot(devbox_id)
    else:
        await wake(backend, admission, devbox_id, spec.memory_mb)


async def in_memory(backend: VMBackend, devbox_id: str) -> None:
    """Save and branch need the VM process: bring a standby VM back, still paused."""
    if (await backend.get_instance(devbox_id)).state is InstanceState.STANDBY:
        await backend.wake(devbox_id)
        await backend.pause(devbox_id)


async def standby(backend: VMBackend, devbox_id: str) -> bool:
    """Save a paused VM's memory to disk and end its process. A failure is logged and
    leaves it paused, with its process: False."""
    try:
        await backend.standby(devbox_id)
    except backend_api.BackendError as exc:
        log.warning("standby failed", extra={"devbox": devbox_id, "error": str(exc)})
        with contextlib.suppress(backend_api.BackendError):
            await backend.pause(devbox_id)  # a failed standby resumes it
        return False
    return True


async def boot(backend: VMBackend, snapshot_id: str, disk_mb: dict[str, int]) -> dict[str, str]:
    """Restore `snapshot_id` into each devbox, its disk grown to its `disk_mb` (a boot may ask
    for a larger disk than the snapshot's); why each one that failed did (no VM left)."""
    try:
        await backend.branch(snapshot_id, list(disk_mb))
    except Exception as exc:
        log.warning("boot failed", extra={"devboxes": list(disk_mb), "error": str(exc)})
        for devbox_id in disk_mb:
            with contextlib.suppress(backend_api.BackendError):
                await backend.delete(devbox_id)
        return dict.fromkeys(disk_mb, f"boot failed: {exc}")
    failed = {}
    for devbox_id, size in disk_mb.items():
        try:
            await backend.grow_disk(devbox_id, size)
        except backend_api.BackendError as exc:
            with contextlib.suppress(backend_api.BackendError):
                await backend.delete(devbox_id)
            failed[devbox_id] = f"the disk did not grow: {exc}"
    return failed
