"""What the fake keeps for each instance and snapshot: the driver's manifests as dataclasses.

Records turn into the `VMBackend` info types only at the edge (`info`), so the backend can
keep what callers never see (disk chains, process flags) next to what they do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from devbox_service.backends.base import (
    InstanceInfo,
    InstanceState,
    MachineSpec,
    SnapshotInfo,
    SSHEndpoint,
)

LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)  # states with a VM process


@dataclass
class InstanceRecord:
    """What the driver keeps in an instance manifest, plus the fake's process flags."""

    id: str
    snapshot_id: str  # booted from
    parent_snapshot_id: str  # latest snapshot of its lineage (booted from, or last saved)
    image_id: str
    state: InstanceState
    spec: MachineSpec
    chain: list[str]  # disk layers, top (writable) first
    ssh_port: int
    forwards: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0
    connected: bool = True  # the backend holds a QMP connection to its VM (lost on close)
    dead: bool = False  # the VM process died and the backend has not noticed yet

    def info(self, key_path: str) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            snapshot_id=self.snapshot_id,
            state=self.state,
            spec=self.spec,
            ssh=SSHEndpoint(
                host="127.0.0.1", port=self.ssh_port, username="root", private_key_path=key_path
            ),
            address="127.0.0.1",
            exposed_ports=dict(self.forwards),
            started_at=self.started_at,
        )


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    image_id: str
    parent_snapshot_id: str | None
    spec: MachineSpec
    chain: tuple[str, ...]  # frozen layers, top first
    size_bytes: int
    created_at: float
    boot: bool = False

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            id=self.id,
            image_id=self.image_id,
            parent_snapshot_id=self.parent_snapshot_id,
            spec=self.spec,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
        )


def snapshot_size(spec: MachineSpec) -> int:
    """A plausible snapshot size: the memory image dominates."""
    return spec.memory_mb * 1024 * 1024
