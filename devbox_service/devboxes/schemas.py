"""Wire shapes of the devbox routes, as the contract names them (records are in `models`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class DevboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    vcpus: int
    memory: int
    disk_size: int


class DevboxRefs(msgspec.Struct, frozen=True, kw_only=True):
    snapshot_id: str | None
    image_id: str | None = None


class HttpService(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    port: int
    url: str
    auth_mode: str | None = None


class Networking(msgspec.Struct, frozen=True, kw_only=True):
    internal_ip: str | None = None
    http_services: list[HttpService] = []


class TTL(msgspec.Struct, frozen=True, kw_only=True):
    ttl_seconds: int | None = None
    ttl_expire_at: int | None = None
    ttl_action: str | None = None


class WakeOn(msgspec.Struct, frozen=True, kw_only=True):
    wake_on_ssh: bool | None = None
    wake_on_http: bool | None = None


class TimelineEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    timestamp: float
    name: str
    snapshot_id: str | None = None
    branch_name: str | None = None
    branch_instance_id: str | None = None
    inherited: bool | None = False


class DevboxView(msgspec.Struct, frozen=True, kw_only=True):
    """What the summary and the full view of a devbox share (contract field order)."""

    id: str
    object: str = "instance"
    status: str
    created: int
    spec: DevboxSpec
    refs: DevboxRefs
    networking: Networking | None = None
    ttl: TTL | None = None
    wake_on: WakeOn | None = None
    metadata: dict[str, Any] = {}
    current_save_id: str | None = None
    base_snapshot_id: str | None = None


class DevboxSummaryResponse(DevboxView, frozen=True, kw_only=True):
    timeline_count: int = 0
    saves_count: int = 0
    branches_count: int = 0
    last_event: TimelineEvent | None = None


class DevboxListResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[DevboxSummaryResponse]


class DevboxResponse(DevboxView, frozen=True, kw_only=True):
    timeline: list[TimelineEvent] = []


class DevboxDetailListResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[DevboxResponse]


Metadata = dict[str, Any]


class CreateDevboxFromSnapshotRequest(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    name: str | None = None
    metadata: Metadata | None = None


class SaveRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=200)] = ""


class BranchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    count: Annotated[int, Meta(ge=1, le=16)] = 1  # beyond the contract: several at once


class BranchResponse(msgspec.Struct, frozen=True, kw_only=True):
    instances: list[DevboxResponse]


class DisplayNameUpdateRequest(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    display_name: Annotated[str, Meta(min_length=1, max_length=200)]


class SnapshotResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "snapshot"
    created: int
    instance_id: str
    name: str
    status: str


class SnapshotListResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[SnapshotResponse]


class ImageResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "image"
    name: str
    description: str
    boot_snapshot_id: str
    default: bool
    created: int


class ImageListResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[ImageResponse]


class DeleteResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "instance"
    deleted: bool = True


class SuccessResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "instance"
    message: str


class DevboxSSHCredentialsResponse(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str | None
    password: str | None


class UploadResponse(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    filename: str
    size: int
    content_type: str
