"""SQL for devboxes and their timeline events."""

from __future__ import annotations

import json

from devbox_service.db import Database, Row
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventRecord


def _devbox(row: Row) -> DevboxRecord:
    return DevboxRecord(
        id=row["id"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        name=row["name"],
        status=DevboxStatus(row["status"]),
        base_snapshot_id=row["base_snapshot_id"],
        current_save_id=row["current_save_id"],
        parent_id=row["parent_id"],
        vcpus=row["vcpus"],
        memory_mb=row["memory_mb"],
        disk_mb=row["disk_mb"],
        metadata=json.loads(row["metadata"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _event(row: Row) -> EventRecord:
    return EventRecord(
        id=row["id"],
        devbox_id=row["devbox_id"],
        type=row["type"],
        snapshot_id=row["snapshot_id"],
        detail=json.loads(row["detail"]),
        created_at=row["created_at"],
    )


class DevboxStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def list_for_org(self, org_id: str) -> list[DevboxRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM devboxes WHERE org_id = ? AND status != 'deleted' ORDER BY created_at",
            (org_id,),
        )
        return [_devbox(r) for r in rows]

    async def events_for(self, devbox_ids: list[str]) -> dict[str, list[EventRecord]]:
        found: dict[str, list[EventRecord]] = {i: [] for i in devbox_ids}
        if not devbox_ids:
            return found
        marks = ",".join("?" * len(devbox_ids))
        rows = await self.database.fetch_all(
            f"SELECT * FROM devbox_events WHERE devbox_id IN ({marks}) ORDER BY created_at",
            devbox_ids,
        )
        for row in rows:
            found[row["devbox_id"]].append(_event(row))
        return found
