"""`QemuBackend`: the embedded microVM driver behind `VMBackend`.

Instances start only by restoring a snapshot (`-incoming`), never by a cold boot: each image
has a boot snapshot (booted, sshd up) cached beside it. Saves freeze the current disk layer
under a new overlay and write memory to a file; restores put a fresh overlay on the frozen
layer. A clock step and an RNG reseed over the virtio-serial agent follow every restore.

The class is assembled from its parts (`boot_snapshots`, `snapshots`, `instances`,
`instance_host`, all over `backend_state`); what lives here is what a service restart needs:
adopting the VMs and files an earlier process left, and reconciling them with the service's
records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    BackendError,
    ImageInfo,
    InstanceState,
    ProgressCallback,
    VMBackend,
)
from devbox_service.backends.qemu import console
from devbox_service.backends.qemu.argv import socket_dir
from devbox_service.backends.qemu.backend_state import LIVE
from devbox_service.backends.qemu.boot_snapshots import BootSnapshots
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.disk_chain import live_chain
from devbox_service.backends.qemu.garbage import Garbage
from devbox_service.backends.qemu.instance_host import InstanceHost
from devbox_service.backends.qemu.instances import Instances
from devbox_service.backends.qemu.machine import Machine
from devbox_service.backends.qemu.snapshots import Snapshots
from devbox_service.backends.qemu.store import InstanceRecord, SnapshotRecord
from devbox_service.backends.qemu.util import kill_strays
from devbox_service.backends.qemu.warm_pool import LAUNCHED_IN, WarmPool

log = logging.getLogger(__name__)


class QemuBackend(Instances, InstanceHost, Snapshots, BootSnapshots, WarmPool, Garbage, VMBackend):
    """VMs as local QEMU processes; see the package docstrings for the file layout."""

    name = "qemu"

    async def start(self) -> None:
        for d in (self.disks, self.instances_dir, self.snapshots_dir):
            d.mkdir(parents=True, exist_ok=True)
        await self.close()
        self._clear_stale_pool()
        self._instances.clear()
        self._snapshots.clear()
        self._load_snapshots()
        for d in sorted(self.instances_dir.iterdir()):
            manifest = d / "manifest.json"
            if not manifest.exists():
                # A boot that never finished: its QEMU (if any) and files go.
                kill_strays(str(socket_dir(d) / "qmp.sock"))
                with contextlib.suppress(FileNotFoundError):  # a process from the pool
                    pooled_in = Path((d / LAUNCHED_IN).read_text())
                    kill_strays(str(socket_dir(pooled_in) / "qmp.sock"))
                shutil.rmtree(d, ignore_errors=True)
                continue
            rec = msgspec.json.decode(manifest.read_bytes(), type=InstanceRecord)
            self._instances[rec.id] = rec
            if rec.state in LIVE:
                await self._adopt(rec)
        self._gc_disks()
        self.mark_image_use()
        self._console_watch = asyncio.create_task(console.watch(self._consoles))

    def _consoles(self) -> list[Path]:
        return [self._dir(rec) / "console.log" for rec in self._instances.values()]

    def _load_snapshots(self) -> None:
        for d in sorted(self.snapshots_dir.iterdir()):
            manifest = d / "manifest.json"
            if d.name.endswith(".tmp") or not manifest.exists():
                # An interrupted save: never offered for boot, removed now.
                shutil.rmtree(d, ignore_errors=True)
                continue
            rec = msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)
            self._snapshots[rec.id] = rec

    async def _adopt(self, rec: InstanceRecord) -> None:
        machine = self._new_machine(rec.launch)
        try:
            if rec.pid is None:
                raise BackendError("no pid recorded")
            await machine.adopt(rec.pid)
            status = await machine.status()
            if rec.state is InstanceState.RUNNING and status != "running":
                status = await self._continue(machine, rec.id, status)
            rec.state = InstanceState.RUNNING if status == "running" else InstanceState.PAUSED
            rec.chain = await live_chain(machine, rec.chain)
            self._machines[rec.id] = machine
        except BackendError as exc:
            log.warning("instance %s did not survive: %s", rec.id, exc.message)
            await machine.shutdown(graceful=False)
            rec.state = InstanceState.STOPPED
            rec.pid = None
        self._write_instance(rec)

    @staticmethod
    async def _continue(machine: Machine, instance_id: str, status: str) -> str:
        """A VM recorded running but found stopped was stopped by a save (or a pause) the
        service did not live to finish: cancel what is left of the save and let it run, as
        the record says. Its status afterwards."""
        log.warning("instance %s was left %s by an interrupted operation", instance_id, status)
        with contextlib.suppress(BackendError):
            await machine.qmp("migrate_cancel")
        try:
            await machine.qmp("cont")
        except BackendError as exc:
            log.warning("instance %s could not be continued: %s", instance_id, exc.message)
        return await machine.status()

    async def ensure_image(self, progress: ProgressCallback | None = None) -> ImageInfo:
        image = await BootSnapshots.ensure_image(self, progress)
        self._fill_pool()
        return image

    async def close(self) -> None:
        await self._drain_pool()
        for task in list(self._flattening.values()):  # QEMU finishes a stream by itself
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watch, self._console_watch = self._console_watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for machine in self._machines.values():
            await machine.disconnect()
        self._machines.clear()

    async def reconcile(self, instance_ids: set[str], snapshot_ids: set[str]) -> list[str]:
        removed: list[str] = []
        for iid in list(self._instances):
            if iid not in instance_ids:
                await self.delete(iid)
                removed.append(iid)
        for sid, snap in list(self._snapshots.items()):
            if sid not in snapshot_ids and not snap.boot:
                await self.delete_snapshot(sid)
                removed.append(sid)
        return removed


__all__ = ["QemuBackend", "QemuConfig"]
