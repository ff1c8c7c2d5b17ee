"""Morph's instance and image wire shapes (`../shared/contract/instances/`): the same devboxes,
in the contract the `morphcloud` SDK's `instances`/`images` read."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from devbox_service.devboxes.schemas import TTL, HttpService, WakeOn

MAX_COMMAND_BYTES = 64 * 1024


class InstanceSpec(msgspec.Struct, frozen=True, kw_only=True):
    vcpus: int
    memory: int
    disk_size: int


class InstanceRefs(msgspec.Struct, frozen=True, kw_only=True):
    snapshot_id: str | None
    image_id: str | None


class InstanceNetworking(msgspec.Struct, frozen=True, kw_only=True):
    """Always present (the SDK requires it)."""

    internal_ip: str | None
    http_services: list[HttpService]


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One devbox, as the SDK's `Instance` reads it."""

    id: str
    object: str = "instance"
    created: int
    status: Literal["pending", "ready", "paused", "saving", "error"]
    spec: InstanceSpec
    refs: InstanceRefs
    networking: InstanceNetworking
    ttl: TTL | msgspec.UnsetType = msgspec.UNSET  # left out (never null) when there is none
    wake_on: WakeOn
    metadata: dict[str, str]


class SnapshotTtlRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_seconds: Annotated[int, Meta(gt=0)] | None


class TtlRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_seconds: Annotated[int, Meta(gt=0)] | None
    ttl_action: Literal["stop", "pause"] | None = None


class WakeOnRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    wake_on_ssh: bool | None = None
    wake_on_http: bool | None = None


class InstanceList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[Instance]


class InstancePage(msgspec.Struct, frozen=True, kw_only=True):
    instances: list[Instance]
    total: int
    page: int
    size: int
    total_pages: int
    has_next: bool
    has_prev: bool


class StartInstanceRequest(msgspec.Struct, frozen=True, kw_only=True):
    metadata: dict[str, str] | None = None
    ttl_seconds: Annotated[int, Meta(gt=0)] | None = None
    ttl_action: Literal["stop", "pause"] | None = None


class ExecRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One element: a shell script. More: an argv, each argument passed as it is."""

    command: Annotated[list[str], Meta(min_length=1)]


class ExecResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
    """Sent only when true: stdout or stderr was cut at the service's limit."""


class MorphImage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "image"
    name: str
    description: str | None
    disk_size: int  # bytes
    created: int


class MorphImageList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[MorphImage]


class SnapshotRefs(msgspec.Struct, frozen=True, kw_only=True):
    image_id: str | None


class SnapshotTtl(msgspec.Struct, frozen=True, kw_only=True):
    ttl_seconds: int | None = None
    ttl_expire_at: int | None = None
    waiting_for: str | None = None  # beyond the contract: why an expired snapshot is kept


class MorphSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "snapshot"
    created: int
    status: Literal["pending", "ready", "failed", "deleting", "deleted"]
    spec: InstanceSpec
    refs: SnapshotRefs
    digest: str | None
    metadata: dict[str, str]
    ttl: SnapshotTtl


class MorphSnapshotList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[MorphSnapshot]


class SnapshotPage(msgspec.Struct, frozen=True, kw_only=True):
    snapshots: list[MorphSnapshot]
    total: int
    page: int
    size: int
    total_pages: int
    has_next: bool
    has_prev: bool


class CreateSnapshotRequest(msgspec.Struct, frozen=True, kw_only=True):
    image_id: str | None = None
    vcpus: Annotated[int, Meta(ge=1)] | None = None
    memory: Annotated[int, Meta(ge=1)] | None = None
    disk_size: Annotated[int, Meta(ge=1)] | None = None
    digest: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    metadata: dict[str, str] | None = None
    ttl_seconds: Annotated[int, Meta(gt=0)] | None = None


class InstanceSnapshotRequest(msgspec.Struct, frozen=True, kw_only=True):
    metadata: dict[str, str] | None = None
    ttl_seconds: Annotated[int, Meta(gt=0)] | None = None


class BootSnapshotRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /snapshot/{id}/boot`, and a reboot into a new spec (`POST /instance/{id}/reboot`)."""

    vcpus: Annotated[int, Meta(ge=1)] | None = None
    memory: Annotated[int, Meta(ge=1)] | None = None
    disk_size: Annotated[int, Meta(ge=1)] | None = None
    metadata: dict[str, str] | None = None
    ttl_seconds: Annotated[int, Meta(gt=0)] | None = None
    ttl_action: Literal["stop", "pause"] | None = None


class InstanceBranchResponse(msgspec.Struct, frozen=True, kw_only=True):
    snapshot: MorphSnapshot
    instances: list[Instance]


class ExposeRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-z0-9]([a-z0-9-_]*[a-z0-9])?$", max_length=63)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    auth_mode: Literal["none", "api_key"] | None = None


class InstanceSshKey(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "instance_ssh_key"
    private_key: str
    public_key: str
    password: str
    access_token: str


class DiskResizeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    disk_size: Annotated[int, Meta(ge=256, le=1048576)]  # MiB


class DiskResizeError(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    retryable: bool


class DiskResizeOperation(msgspec.Struct, frozen=True, kw_only=True):
    """Answered by `POST /instance/{id}/disk-resize` and its status route. The disk grows
    online (`capacity_mode` "online"): the block device, then the root filesystem."""

    id: str
    instance_id: str
    previous_disk_size: int
    requested_disk_size: int
    capacity_mode: str
    status: Literal["pending", "running", "succeeded", "failed", "recovery_required"]
    phase: Literal["accepted", "geometry_ready", "budget_applied", "complete"]
    capacity_generation: int
    created_at: str
    updated_at: str
    completed_at: str | None = None
    error: DiskResizeError | None = None
    retry_after_seconds: float = 1.0
    object: str = "instance_disk_resize"
