"""Devbox rules: who sees which devbox, and what each lifecycle action may do."""

from __future__ import annotations

from devbox_service.auth.models import Principal
from devbox_service.backends.base import VMBackend
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxRefs,
    DevboxSpec,
    DevboxSummaryResponse,
    EventRecord,
    TimelineEvent,
)
from devbox_service.devboxes.store import DevboxStore


class DevboxService:
    def __init__(self, store: DevboxStore, backend: VMBackend | None) -> None:
        self.store = store
        self.backend = backend

    async def list_summaries(self, principal: Principal) -> list[DevboxSummaryResponse]:
        """Devboxes are shared live inside their organization."""
        records = await self.store.list_for_org(principal.org_id)
        events = await self.store.events_for([r.id for r in records])
        return [summary(r, events[r.id]) for r in records]


def timeline_event(event: EventRecord) -> TimelineEvent:
    return TimelineEvent(
        id=event.id,
        type=event.type,
        timestamp=event.created_at,
        name=str(event.detail.get("name", event.type)),
        snapshot_id=event.snapshot_id,
        branch_name=event.detail.get("branch_name"),
        branch_instance_id=event.detail.get("branch_instance_id"),
    )


def summary(record: DevboxRecord, events: list[EventRecord]) -> DevboxSummaryResponse:
    return DevboxSummaryResponse(
        id=record.id,
        status=record.status.value,
        created=int(record.created_at),
        spec=DevboxSpec(vcpus=record.vcpus, memory=record.memory_mb, disk_size=record.disk_mb),
        refs=DevboxRefs(snapshot_id=record.base_snapshot_id),
        metadata=record.metadata,
        timeline_count=len(events),
        saves_count=sum(1 for e in events if e.type == "save"),
        branches_count=sum(1 for e in events if e.type == "branch"),
        last_event=timeline_event(events[-1]) if events else None,
        current_save_id=record.current_save_id,
        base_snapshot_id=record.base_snapshot_id,
    )
