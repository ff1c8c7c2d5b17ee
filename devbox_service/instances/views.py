"""Records as the Morph contract shows them: an instance straight from its devbox record and
exposed HTTP services (never through the devbox wire view, which carries a timeline this
contract has no place for), snapshots, images, disk resizes and the pages of lists."""

from __future__ import annotations

import datetime
import math
from typing import Any, TypeVar

import msgspec

from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    DiskResizeRecord,
    DiskResizeStatus,
    SnapshotRecord,
)
from devbox_service.devboxes.schemas import HttpService, ImageResponse, WakeOn
from devbox_service.devboxes.views import GUEST_IP, ttl_of
from devbox_service.instances.schemas import (
    DiskResizeError,
    DiskResizeOperation,
    Instance,
    InstanceNetworking,
    InstanceRefs,
    InstanceSpec,
    MorphImage,
    MorphSnapshot,
    SnapshotRefs,
    SnapshotTtl,
)

T = TypeVar("T")

STATUS = {
    DevboxStatus.PROVISIONING: "pending",
    DevboxStatus.READY: "ready",
    DevboxStatus.PAUSING: "saving",  # Morph saves memory on pause
    DevboxStatus.PAUSED: "paused",
    DevboxStatus.RESUMING: "pending",
    DevboxStatus.REBOOTING: "pending",
    DevboxStatus.ERROR: "error",
}
"""A devbox's status as an instance's; deleting ones are gone already (404, not listed)."""


def instance_view(record: DevboxRecord, http_services: list[HttpService]) -> Instance:
    """The one mapping of a devbox record to an instance (the SDK reads metadata as strings)."""
    return Instance(
        id=record.id,
        created=int(record.created_at),
        status=STATUS[record.status],  # type: ignore[arg-type]
        spec=InstanceSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        refs=InstanceRefs(snapshot_id=record.base_snapshot_id, image_id=record.image_id),
        networking=InstanceNetworking(internal_ip=GUEST_IP, http_services=http_services),
        ttl=ttl_of(record) or msgspec.UNSET,
        wake_on=WakeOn(wake_on_ssh=record.wake_on_ssh, wake_on_http=record.wake_on_http),
        metadata={str(k): v if isinstance(v, str) else str(v) for k, v in record.metadata.items()},
    )


def snapshot_view(record: SnapshotRecord, image_id: str | None) -> MorphSnapshot:
    return MorphSnapshot(
        id=record.id,
        created=int(record.created_at),
        status=record.status.value,
        spec=InstanceSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        refs=SnapshotRefs(image_id=image_id),
        digest=record.digest,
        metadata={str(k): str(v) for k, v in record.metadata.items()},
        ttl=SnapshotTtl(
            ttl_seconds=record.ttl_seconds,
            ttl_expire_at=None if record.ttl_expire_at is None else int(record.ttl_expire_at),
            waiting_for=record.ttl_waiting_for,
        ),
    )


def image_view(image: ImageResponse, disk_mb: int) -> MorphImage:
    """Images carry no size of their own: the service's default disk, in bytes."""
    return MorphImage(
        id=image.id,
        name=image.name,
        description=image.description,
        disk_size=disk_mb * 2**20,
        created=image.created,
    )


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def disk_resize_view(operation: DiskResizeRecord) -> DiskResizeOperation:
    done = operation.status is not DiskResizeStatus.RUNNING
    return DiskResizeOperation(
        id=operation.id,
        instance_id=operation.devbox_id,
        previous_disk_size=operation.previous_mb,
        requested_disk_size=operation.requested_mb,
        capacity_mode="online",
        status=operation.status.value,
        phase="complete" if operation.status is DiskResizeStatus.SUCCEEDED else "accepted",
        capacity_generation=operation.capacity_generation,
        created_at=_iso(operation.created_at),
        updated_at=_iso(operation.updated_at),
        completed_at=_iso(operation.completed_at) if done and operation.completed_at else None,
        error=None
        if operation.error is None
        else DiskResizeError(code="disk_resize_failed", message=operation.error, retryable=True),
    )


def paginate(found: list[T], page: int, size: int) -> tuple[list[T], dict[str, Any]]:
    """One page of `found` and the counts the contract's paginated lists carry."""
    pages = max(1, math.ceil(len(found) / size))
    start = (page - 1) * size
    counts = {
        "total": len(found),
        "page": page,
        "size": size,
        "total_pages": pages,
        "has_next": page < pages,
        "has_prev": page > 1,
    }
    return found[start : start + size], counts


def metadata_filter(query: dict[str, str]) -> dict[str, str]:
    """`metadata[k]=v` query parameters as {k: v} (ANDed)."""
    return {
        key[len("metadata[") : -1]: value
        for key, value in query.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
