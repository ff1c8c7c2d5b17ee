"""What every part of `QemuBackend` shares: its records, live machines, locks and disk pool.

The backend is one object built from parts by concern (`boot_snapshots`, `snapshots`,
`instances`, and `driver` for start-up adoption and reconcile). Each part works only on the
state and helpers kept here, never on another part's internals, so one can change without
the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    InstanceInfo,
    InstanceState,
    InvalidState,
    NotFound,
)
from devbox_service.backends.qemu import image as images
from devbox_service.backends.qemu.argv import LaunchSpec
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.confine import qemu_user
from devbox_service.backends.qemu.machine import Machine
from devbox_service.backends.qemu.store import InstanceRecord, SnapshotRecord
from devbox_service.backends.qemu.util import free_port, host_tsc_khz, run, write_json_atomic

LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)  # states with a QEMU process


class Pooled(msgspec.Struct, kw_only=True):
    """A QEMU process of the warm pool, waiting for a snapshot's state (`warm_pool`)."""

    machine: Machine
    snapshot_id: str
    top: str  # its writable disk layer (pending in the disk pool until taken)


class BackendState:
    """The backend's in-memory view of its state dir, and the helpers all parts use on it."""

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self.root = config.state_path
        self.disks = self.root / "disks"
        self.instances_dir = self.root / "instances"
        self.snapshots_dir = self.root / "snapshots"
        self._instances: dict[str, InstanceRecord] = {}
        self._machines: dict[str, Machine] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._pending_disks: set[str] = set()  # created but not yet in any record
        self._flattening: dict[str, asyncio.Task[None]] = {}  # instance id -> its stream
        self._accel: str | None = None
        self._image: images.ImageFiles | None = None
        self._console_watch: asyncio.Task[None] | None = None
        self._boot: SnapshotRecord | None = None
        self._pool: list[Pooled] = []
        self._pool_filler: asyncio.Task[None] | None = None
        self._pool_endings: set[asyncio.Task[None]] = set()  # unused pooled processes ending
        self.last_save_pause: float = 0.0  # seconds the guest stood still in the last save
        self.qemu_user = qemu_user(config.qemu_user)  # "" : QEMU keeps the service's user

    def _new_machine(self, launch: LaunchSpec) -> Machine:
        """A QEMU for `launch`, confined (`confine`): every process the backend starts."""
        return Machine(self.config.qemu_binary, launch, run_as=self.qemu_user)

    # records --------------------------------------------------------------------------------

    def _instance(self, instance_id: str) -> InstanceRecord:
        rec = self._instances.get(instance_id)
        if rec is None:
            raise NotFound(f"no instance {instance_id!r}", instance_id=instance_id)
        return rec

    def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        """A user snapshot, or the boot snapshot of any cached image."""
        rec = self._snapshots.get(snapshot_id)
        if rec is not None:
            return rec
        if self._boot is not None and self._boot.id == snapshot_id:
            return self._boot
        if snapshot_id.startswith("boot-"):
            for manifest in self.config.cache_path.glob("images/*/boot/*/manifest.json"):
                boot = msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)
                if boot.id == snapshot_id:
                    return boot
        raise NotFound(f"no snapshot {snapshot_id!r}", snapshot_id=snapshot_id)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _locked(self, instance_id: str) -> AsyncIterator[InstanceRecord]:
        """The instance's record under its lock: one operation on an instance at a time."""
        async with self._lock(instance_id):
            yield self._instance(instance_id)

    def _live_machine(self, rec: InstanceRecord) -> Machine:
        """The instance's QEMU; a process found dead turns the record to stopped."""
        machine = self._machines.get(rec.id)
        if rec.state not in LIVE or machine is None:
            raise InvalidState(f"instance {rec.id} is not running", state=rec.state)
        if not machine.alive():
            rec.state, rec.pid = InstanceState.STOPPED, None
            self._machines.pop(rec.id, None)
            self._write_instance(rec)
            raise InvalidState(f"the VM of {rec.id} has exited", state=rec.state)
        return machine

    def _dir(self, rec: InstanceRecord) -> Path:
        return self.instances_dir / rec.id

    def _standby_file(self, rec: InstanceRecord) -> Path:
        return self._dir(rec) / "standby.state"

    def _write_instance(self, rec: InstanceRecord) -> None:
        if (self._dir(rec)).exists():
            write_json_atomic(self._dir(rec) / "manifest.json", msgspec.to_builtins(rec))

    def _commit(self, rec: InstanceRecord) -> InstanceInfo:
        """Persist a changed record and describe it to the caller."""
        self._write_instance(rec)
        return rec.info(self._key_path)

    @property
    def _key_path(self) -> str:
        return str(images.ssh_key_path(self.config))

    def _take_pooled(self, snap: SnapshotRecord, instance_dir: Path) -> Pooled | None:
        """A process already waiting for `snap`'s state, moved to `instance_dir` (the warm
        pool's part provides them; without one there are none)."""
        return None

    # launching ------------------------------------------------------------------------------

    def _launch_spec(
        self, name: str, d: Path, accel: str, kernel: str, initrd: str, disk: str,
        machine: str | None = None,
    ) -> LaunchSpec:  # fmt: skip
        """A launch on fresh host ports (boot snapshots and new instances)."""
        machine = machine or self.config.machine
        return LaunchSpec(
            name=name,
            dir=str(d),
            machine=machine,
            accel=accel,
            spec=self.config.spec,
            kernel=kernel,
            initrd=initrd,
            disk=disk,
            ssh_port=free_port(),
            tsc_khz=host_tsc_khz() if machine == "microvm" and accel == "tcg" else 0,
            isolated=self.config.isolated,
            guest_services=dict(self.config.guest_services),
        )

    # disk pool ------------------------------------------------------------------------------

    async def _create_overlay(
        self, path: Path, backing: str, size_mb: int | None = None, size_bytes: int | None = None
    ) -> None:
        """A new top layer over `backing`; as large as it, or `size_mb` (a grown disk).

        With `size_bytes` (a save's overlay over the layer a running QEMU writes), the backing
        is not opened at all (`-u`): only its name goes into the header."""
        size = [] if size_mb is None else [f"{size_mb}M"]
        unsafe = []
        if size_bytes is not None:
            size, unsafe = [str(size_bytes)], ["-u"]
        await run(
            [
                self.config.qemu_img, "create", "-q", "-f", "qcow2", *unsafe,
                "-b", backing, "-F", "qcow2", str(path), *size,
            ],
            timeout=30,
        )  # fmt: skip

    def _gc_disks(self) -> None:
        """Delete pool layers no record references (reference counting by reachability)."""
        used = set(self._pending_disks)
        for inst in self._instances.values():
            used.update(inst.chain)
        for snap in self._snapshots.values():
            used.update(snap.chain)
        for f in self.disks.glob("*.qcow2"):
            if str(f) not in used:
                f.unlink(missing_ok=True)
