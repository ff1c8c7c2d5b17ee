"""Devbox records: what the store keeps (the wire shapes are in `schemas`)."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from devbox_service.backends.base import MachineSpec


class DevboxStatus(enum.StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    REBOOTING = "rebooting"
    ERROR = "error"
    DELETING = "deleting"


class SnapshotKind(enum.StrEnum):
    SAVE = "save"  # POST .../save
    BRANCH = "branch"  # the checkpoint a branch's children boot from


class SnapshotStatus(enum.StrEnum):
    PENDING = "pending"  # recorded before the backend writes it: a crash leaves no orphan
    READY = "ready"
    FAILED = "failed"


class DevboxRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    user_id: str
    name: str
    status: DevboxStatus
    base_snapshot_id: str | None
    current_save_id: str | None
    parent_id: str | None
    vcpus: int
    memory_mb: int
    disk_mb: int
    metadata: dict[str, Any]
    error: str | None
    created_at: float
    updated_at: float
    ssh_credentials_sealed: str | None = None
    image_id: str | None = None
    wake_on_ssh: bool = True
    wake_on_http: bool = True
    ttl_seconds: int | None = None
    ttl_action: str | None = None  # "pause" or "stop"
    ttl_expire_at: float | None = None

    @property
    def spec(self) -> MachineSpec:
        return MachineSpec(vcpus=self.vcpus, memory_mb=self.memory_mb, disk_mb=self.disk_mb)


class SnapshotRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    user_id: str
    devbox_id: str | None
    name: str
    kind: SnapshotKind
    status: SnapshotStatus
    vcpus: int
    memory_mb: int
    disk_mb: int
    created_at: float
    digest: str | None = None
    metadata: dict[str, Any] = {}
    ttl_seconds: int | None = None
    ttl_expire_at: float | None = None
    ttl_waiting_for: str | None = None  # why an expired snapshot is still kept


class EventType(enum.StrEnum):
    """A timeline entry's kind (the contract's `TimelineEvent.type`)."""

    CREATE = "create"
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    SAVE = "save"
    BRANCH = "branch"
    DISK_RESIZE = "disk_resize"


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    devbox_id: str
    type: EventType
    snapshot_id: str | None
    detail: dict[str, Any]
    created_at: float


class DiskResizeStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DiskResizeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One request to grow a devbox's disk (sizes in MB); `capacity_generation` counts the
    devbox's grown disks, this one included once it succeeded."""

    id: str
    devbox_id: str
    idempotency_key: str
    previous_mb: int
    requested_mb: int
    status: DiskResizeStatus
    capacity_generation: int
    created_at: float
    updated_at: float
    error: str | None = None
    completed_at: float | None = None
