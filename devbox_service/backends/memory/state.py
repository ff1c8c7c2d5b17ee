"""What every part of `MemoryBackend` shares: its records, locks, ports and disk layers.

As in `QemuBackend`, the backend is one object built from parts by concern (`hooks`,
`snapshots`, and `backend` for lifecycle and instances); each part works on the stores and
helpers kept here, so the lookups and the rules they enforce (not found, not running, a dead
VM noticed) exist once.
"""

from __future__ import annotations

import asyncio
import itertools
import socket

from devbox_service.backends.base import (
    ImageInfo,
    InstanceState,
    InvalidState,
    MachineSpec,
    NotFound,
)
from devbox_service.backends.memory.records import LIVE, InstanceRecord, SnapshotRecord


class MemoryState:
    """The fake's stand-in for the driver's state dir, and the helpers all parts use on it."""

    def __init__(self, *, spec: MachineSpec, ssh_key_path: str) -> None:
        self.spec = spec
        self.ssh_key_path = ssh_key_path
        self.started = False  # start() was called (and close() not since)
        self._instances: dict[str, InstanceRecord] = {}
        self._snapshots: dict[str, SnapshotRecord] = {}  # user snapshots; the boot one is apart
        self._image: ImageInfo | None = None
        self._boot: SnapshotRecord | None = None
        self._sized_boots: dict[MachineSpec, SnapshotRecord] = {}  # image_snapshot's other sizes
        self._locks: dict[str, asyncio.Lock] = {}
        self._ports: set[int] = set()
        self._layer_ids = itertools.count(1)

    # records --------------------------------------------------------------------------------

    def _instance(self, instance_id: str) -> InstanceRecord:
        rec = self._instances.get(instance_id)
        if rec is None:
            raise NotFound(f"no instance {instance_id!r}", instance_id=instance_id)
        return rec

    def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        snap = self._snapshots.get(snapshot_id)
        if snap is None and self._boot is not None and self._boot.id == snapshot_id:
            snap = self._boot
        if snap is None:
            snap = next((b for b in self._sized_boots.values() if b.id == snapshot_id), None)
        if snap is None:
            raise NotFound(f"no snapshot {snapshot_id!r}", snapshot_id=snapshot_id)
        return snap

    def _live(self, rec: InstanceRecord) -> None:
        """The driver's `_live_machine`: a VM process must exist; a dead one is noticed here."""
        if rec.state not in LIVE or not rec.connected:
            raise InvalidState(f"instance {rec.id} is not running", state=rec.state)
        if rec.dead:
            rec.state, rec.dead, rec.connected = InstanceState.STOPPED, False, False
            raise InvalidState(f"the VM of {rec.id} has exited", state=rec.state)

    async def _delete(self, instance_id: str) -> None:
        async with self._lock(instance_id):
            self._instance(instance_id)
            del self._instances[instance_id]
        self._locks.pop(instance_id, None)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    # disks and ports ------------------------------------------------------------------------

    def _new_layer(self) -> str:
        return f"layer-{next(self._layer_ids)}"

    def _new_port(self) -> int:
        """A loopback port free right now and never handed out before by this backend."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port
