"""User snapshots: save a running instance, list, look up and delete.

A save freezes the instance's current top layer (it becomes the snapshot's disk), puts a new
writable overlay on it for the instance, and writes memory to `snapshots/<id>/state`. The
snapshot directory appears under its final name only once complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    BackendTimeout,
    InvalidState,
    NotFound,
    SnapshotInfo,
    check_id,
)
from devbox_service.backends.qemu.backend_state import BackendState
from devbox_service.backends.qemu.disk_chain import live_chain
from devbox_service.backends.qemu.store import SnapshotRecord
from devbox_service.backends.qemu.util import file_size, fsync_path, write_json_atomic

log = logging.getLogger(__name__)

FLATTEN_DEPTH = 8
"""Layers an instance's disk chain may have before a save starts streaming them into its top
(the image's own layer stays shared)."""
FLATTEN_POLL = 0.25
FLATTEN_WAIT = 10.0
"""Seconds a save waits for a stream under way (it copies only what the layers changed, so
it is short) before cancelling it: saves back to back would otherwise never let one end."""


class Snapshots(BackendState):
    """`save`, `list_snapshots`, `get_snapshot` and `delete_snapshot`."""

    async def save(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        check_id("snapshot", snapshot_id)
        if snapshot_id in self._snapshots or snapshot_id.startswith("boot-"):
            raise AlreadyExists(f"snapshot {snapshot_id!r} already exists", id=snapshot_id)
        async with self._locked(instance_id) as rec:
            machine = self._live_machine(rec)
            work = self.snapshots_dir / f"{snapshot_id}.tmp"
            final = self.snapshots_dir / snapshot_id
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            new_top = self.disks / f"{uuid.uuid4().hex}.qcow2"
            self._pending_disks.add(str(new_top))
            try:
                async with asyncio.timeout(self.config.restore_timeout):
                    await machine.settle_flattening(FLATTEN_WAIT)
                    rec.chain = await live_chain(machine, rec.chain)  # a stream may have ended
                    await self._create_overlay(
                        new_top, rec.chain[0], size_bytes=await machine.disk_size()
                    )
                    self.last_save_pause = await machine.save_state(
                        work / "state", new_top=new_top, timeout=self.config.restore_timeout
                    )
                old_chain = rec.chain
                rec.chain = [str(new_top), *old_chain]
                rec.launch = msgspec.structs.replace(rec.launch, disk=str(new_top))
                parent = rec.parent_snapshot_id
                rec.parent_snapshot_id = snapshot_id
                self._write_instance(rec)
                frozen = Path(old_chain[0])
                os.chmod(frozen, 0o444)
                await asyncio.to_thread(_fsync_all, [frozen, work / "state"])
                snap = SnapshotRecord.of_launch(
                    rec.launch,
                    id=snapshot_id,
                    image_id=rec.image_id,
                    parent_snapshot_id=parent,
                    chain=old_chain,
                    dir=str(final),
                    size_bytes=file_size(work / "state") + file_size(frozen),
                )
                write_json_atomic(work / "manifest.json", msgspec.to_builtins(snap))
                os.replace(work, final)  # listed and bootable only from here on
                fsync_path(self.snapshots_dir)
                self._snapshots[snapshot_id] = snap
                if len(rec.chain) > FLATTEN_DEPTH:
                    self._start_flattening(rec.id)
                return snap.info()
            except BaseException as exc:
                # The disk may have been switched to new_top before the failure: believe QEMU,
                # or a later garbage collection would delete the layer the VM writes to.
                if str(new_top) not in rec.chain and machine.alive():
                    rec.chain = await live_chain(machine, rec.chain)
                    rec.launch = msgspec.structs.replace(rec.launch, disk=rec.chain[0])
                    self._write_instance(rec)
                if isinstance(exc, TimeoutError):
                    raise BackendTimeout(f"save of {instance_id} timed out") from None
                raise
            finally:
                self._pending_disks.discard(str(new_top))
                shutil.rmtree(work, ignore_errors=True)

    def _start_flattening(self, instance_id: str) -> None:
        if instance_id not in self._flattening:
            task = asyncio.create_task(self._flatten(instance_id))
            self._flattening[instance_id] = task
            task.add_done_callback(lambda _: self._flattening.pop(instance_id, None))

    async def _flatten(self, instance_id: str) -> None:
        """Keep an instance's chain short: every save adds a layer, and a restore (and each
        read the guest makes) walks them all. The stream runs while the guest does; a save or
        standby that comes first cancels it, and a later save starts it again."""
        try:
            async with self._locked(instance_id) as rec:
                machine = self._live_machine(rec)
                await machine.stream_into_top(rec.chain[-1])
            while await machine.flattening():
                await asyncio.sleep(FLATTEN_POLL)
            async with self._locked(instance_id) as rec:
                if self._machines.get(instance_id) is machine and machine.alive():
                    rec.chain = await live_chain(machine, rec.chain)
                    self._write_instance(rec)
                    self._gc_disks()
        except (BackendError, NotFound) as exc:
            log.info("flattening %s stopped: %s", instance_id, exc)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        out = [s.info() for s in self._snapshots.values()]
        if self._boot is not None:
            out.insert(0, self._boot.info())
        return out

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return self._snapshot(snapshot_id).info()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        rec = self._snapshot(snapshot_id)
        if rec.boot:
            raise InvalidState("boot snapshots belong to their image", state="boot")
        del self._snapshots[snapshot_id]
        shutil.rmtree(rec.dir, ignore_errors=True)
        fsync_path(self.snapshots_dir)
        self._gc_disks()  # layers that dependants still use stay


def _fsync_all(paths: list[Path]) -> None:
    for p in paths:
        fsync_path(p)
