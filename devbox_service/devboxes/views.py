"""How devboxes look on the wire: the summary and full views, built from a record, its
timeline and its exposed HTTP services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize
from devbox_service.db.cache import VersionedCache
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.models import DevboxRecord, EventRecord, EventType, SnapshotRecord
from devbox_service.devboxes.schemas import (
    TTL,
    DevboxRefs,
    DevboxResponse,
    DevboxSpec,
    DevboxSummaryResponse,
    HttpService,
    Networking,
    SnapshotResponse,
    TimelineEvent,
    WakeOn,
)

GUEST_IP = "10.0.2.15"


class HttpServiceLister(Protocol):
    """The exposed services of many devboxes at once, with their preview URLs (previews/)."""

    async def http_services_for(
        self, devbox_ids: Sequence[str]
    ) -> dict[str, list[HttpService]]: ...


class DevboxViews:
    def __init__(self, core: DevboxCore, http_services: HttpServiceLister) -> None:
        self._core = core
        self._http_services = http_services
        self._views: VersionedCache[str, tuple[tuple[str, str], DevboxResponse]] = VersionedCache(
            core.store.database
        )

    async def list_summaries(self, principal: Principal) -> list[DevboxSummaryResponse]:
        records = await self._core.store.list_for_org(principal.org_id)
        events, services = await self._extras(records)
        return [summary(r, events[r.id], services[r.id]) for r in records]

    async def list_detailed(self, principal: Principal) -> list[DevboxResponse]:
        records = await self._core.store.list_for_org(principal.org_id)
        return await self.details(records)

    async def get(
        self, principal: Principal, devbox_id: str, act: Act = Act.VIEW
    ) -> DevboxResponse:
        """The most read answer of the API: kept until the database changes at all. After a
        change it is read under the act that changed it (an agent token that may expose a
        port sees the answer without the read scope)."""
        known, version = self._views.lookup(devbox_id)
        if known is not None:
            (user_id, org_id), view = known
            authorize(
                principal,
                act,
                user_id=user_id,
                org_id=org_id,
                devbox_id=devbox_id,
                resource=("devbox", devbox_id),
            )
            return view
        record = await self._core.visible(principal, devbox_id, act)
        view = await self.detail(record)
        self._views.store(devbox_id, ((record.user_id, record.org_id), view), version)
        return view

    async def summary(self, principal: Principal, devbox_id: str) -> DevboxSummaryResponse:
        record = await self._core.visible(principal, devbox_id, Act.VIEW)
        events, services = await self._extras([record])
        return summary(record, events[record.id], services[record.id])

    async def detail(self, record: DevboxRecord) -> DevboxResponse:
        (found,) = await self.details([record])
        return found

    async def details(self, records: Sequence[DevboxRecord]) -> list[DevboxResponse]:
        events, services = await self._extras(records)
        return [detail(r, events[r.id], services[r.id]) for r in records]

    async def _extras(
        self, records: Sequence[DevboxRecord]
    ) -> tuple[dict[str, list[EventRecord]], dict[str, list[HttpService]]]:
        ids = [r.id for r in records]
        return (
            await self._core.store.events_for(ids),
            await self._http_services.http_services_for(ids),
        )


def ttl_of(record: DevboxRecord) -> TTL | None:
    if record.ttl_seconds is None:
        return None
    return TTL(
        ttl_seconds=record.ttl_seconds,
        ttl_expire_at=int(record.ttl_expire_at) if record.ttl_expire_at is not None else None,
        ttl_action=record.ttl_action,
    )


def timeline_event(event: EventRecord) -> TimelineEvent:
    return TimelineEvent(
        id=event.id,
        type=event.type.value,
        timestamp=event.created_at,
        name=str(event.detail.get("name", event.type.value)),
        snapshot_id=event.snapshot_id,
        branch_name=event.detail.get("branch_name"),
        branch_instance_id=event.detail.get("branch_instance_id"),
    )


def snapshot_response(snapshot: SnapshotRecord) -> SnapshotResponse:
    return SnapshotResponse(
        id=snapshot.id,
        created=int(snapshot.created_at),
        instance_id=snapshot.devbox_id or "",
        name=snapshot.name,
        status=snapshot.status.value,
    )


def _common(record: DevboxRecord, http_services: list[HttpService]) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status.value,
        "created": int(record.created_at),
        "spec": DevboxSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        "refs": DevboxRefs(snapshot_id=record.base_snapshot_id, image_id=record.image_id),
        "networking": Networking(internal_ip=GUEST_IP, http_services=http_services),
        "wake_on": WakeOn(wake_on_ssh=record.wake_on_ssh, wake_on_http=record.wake_on_http),
        "ttl": ttl_of(record),
        "metadata": record.metadata,
        "current_save_id": record.current_save_id,
        "base_snapshot_id": record.base_snapshot_id,
    }


def summary(
    record: DevboxRecord, events: list[EventRecord], http_services: list[HttpService]
) -> DevboxSummaryResponse:
    return DevboxSummaryResponse(
        **_common(record, http_services),
        timeline_count=len(events),
        saves_count=sum(1 for e in events if e.type is EventType.SAVE),
        branches_count=sum(1 for e in events if e.type is EventType.BRANCH),
        last_event=timeline_event(events[-1]) if events else None,
    )


def detail(
    record: DevboxRecord, events: list[EventRecord], http_services: list[HttpService]
) -> DevboxResponse:
    return DevboxResponse(
        **_common(record, http_services), timeline=[timeline_event(e) for e in events]
    )
