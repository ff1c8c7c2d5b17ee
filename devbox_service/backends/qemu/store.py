"""On-disk records of the QEMU backend: instance and snapshot manifests, and the disk pool.

Layout::

    state_dir/
      disks/<uuid>.qcow2           every qcow2 layer made by this state dir (shared pool)
      instances/<id>/manifest.json  + qmp.sock, agent.sock, console.log, qemu.log, standby.state
      snapshots/<id>/manifest.json  + state (memory); <id>.tmp/ while a save is in progress
    cache_dir/images/<recipe>/boot/<key>/manifest.json, disk.qcow2, state   (boot snapshots)

QMP and agent sockets sit in the instance directory unless that path is too long for a unix
socket; then in $TMPDIR/devbox-vm-<uid>/<hash of the instance dir>/ (see argv.socket_dir).

Every record lists its whole disk chain (top first). A layer in `disks/` is deleted once no
record's chain mentions it: that reference counting keeps children working when a parent
snapshot is deleted.
"""

from __future__ import annotations

import time

import msgspec

from devbox_service.backends.base import (
    InstanceInfo,
    InstanceState,
    MachineSpec,
    SnapshotInfo,
    SSHEndpoint,
)
from devbox_service.backends.qemu.argv import GuestRam, LaunchSpec


class SnapshotRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    image_id: str
    parent_snapshot_id: str | None
    spec: MachineSpec
    machine: str
    accel: str
    kernel: str
    initrd: str
    chain: list[str]  # chain[0] is the snapshot's frozen (read-only) top layer
    dir: str
    size_bytes: int
    created_at: float
    boot: bool = False
    memory_file: str | None = None  # guest memory as a template file (boot snapshots)

    @classmethod
    def of_launch(
        cls, launch: LaunchSpec, *, id: str, image_id: str, parent_snapshot_id: str | None,
        chain: list[str], dir: str, size_bytes: int, boot: bool = False,
        memory_file: str | None = None,
    ) -> SnapshotRecord:  # fmt: skip
        """A new snapshot of a guest run by `launch`: it restores only into the same machine."""
        return cls(
            id=id,
            image_id=image_id,
            parent_snapshot_id=parent_snapshot_id,
            spec=launch.spec,
            machine=launch.machine,
            accel=launch.accel,
            kernel=launch.kernel,
            initrd=launch.initrd,
            chain=chain,
            dir=dir,
            size_bytes=size_bytes,
            created_at=time.time(),
            boot=boot,
            memory_file=memory_file,
        )

    @property
    def state_file(self) -> str:
        return self.dir + "/state"

    @property
    def ram(self) -> GuestRam | None:
        """How a restore maps guest memory: privately from the template file, if any."""
        return None if self.memory_file is None else GuestRam(path=self.memory_file)

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            id=self.id,
            image_id=self.image_id,
            parent_snapshot_id=self.parent_snapshot_id,
            spec=self.spec,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
        )


class InstanceRecord(msgspec.Struct, kw_only=True):
    id: str
    snapshot_id: str  # booted from
    parent_snapshot_id: str  # the latest snapshot in its lineage (booted from, or last saved)
    image_id: str
    state: InstanceState
    launch: LaunchSpec
    chain: list[str]  # chain[0] is the instance's writable top layer (== launch.disk)
    pid: int | None = None
    started_at: float = 0.0
    created_at: float = 0.0

    def info(self, key_path: str) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            snapshot_id=self.snapshot_id,
            state=self.state,
            spec=self.launch.spec,
            ssh=SSHEndpoint(
                host="127.0.0.1",
                port=self.launch.ssh_port,
                username="root",
                private_key_path=key_path,
            ),
            address="127.0.0.1",
            exposed_ports=dict(self.launch.forwards),
            started_at=self.started_at,
        )
