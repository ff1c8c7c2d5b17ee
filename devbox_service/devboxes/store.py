"""SQL for devboxes, their timeline events and the snapshots users saved."""

from __future__ import annotations

import json
import time
from typing import Any

from devbox_service.db import Database, Row
from devbox_service.db.database import Transaction
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventRecord, SnapshotRecord


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
        ssh_credentials_sealed=row["ssh_credentials_sealed"],
        image_id=row["image_id"],
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


def _snapshot(row: Row) -> SnapshotRecord:
    return SnapshotRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118 (sqlite3.Row)


class DevboxStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # devboxes

    async def insert(self, tx: Transaction, record: DevboxRecord, *, ssh_token_hash: str) -> None:
        await tx.execute(
            "INSERT INTO devboxes (id, org_id, user_id, name, status, base_snapshot_id, "
            "current_save_id, parent_id, vcpus, memory_mb, disk_mb, metadata, error, created_at, "
            "updated_at, ssh_token_hash, ssh_credentials_sealed, image_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.org_id,
                record.user_id,
                record.name,
                record.status.value,
                record.base_snapshot_id,
                record.current_save_id,
                record.parent_id,
                record.vcpus,
                record.memory_mb,
                record.disk_mb,
                json.dumps(record.metadata),
                record.error,
                record.created_at,
                record.updated_at,
                ssh_token_hash,
                record.ssh_credentials_sealed,
                record.image_id,
            ),
        )

    async def get(self, devbox_id: str) -> DevboxRecord | None:
        row = await self.database.fetch_one("SELECT * FROM devboxes WHERE id = ?", (devbox_id,))
        return _devbox(row) if row else None

    async def all(self) -> list[DevboxRecord]:
        return [_devbox(r) for r in await self.database.fetch_all("SELECT * FROM devboxes")]

    async def list_for_org(self, org_id: str) -> list[DevboxRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM devboxes WHERE org_id = ? ORDER BY created_at", (org_id,)
        )
        return [_devbox(r) for r in rows]

    async def by_ssh_token_hash(self, token_hash: str) -> DevboxRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM devboxes WHERE ssh_token_hash = ?", (token_hash,)
        )
        return _devbox(row) if row else None

    async def update(self, devbox_id: str, **fields: Any) -> None:
        """Set columns of one devbox (JSON-encoding `metadata`), bumping `updated_at`."""
        if "metadata" in fields:
            fields["metadata"] = json.dumps(fields["metadata"])
        if "status" in fields:
            fields["status"] = DevboxStatus(fields["status"]).value
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        await self.database.execute(
            f"UPDATE devboxes SET {assignments} WHERE id = ?", (*fields.values(), devbox_id)
        )

    async def delete(self, devbox_id: str) -> None:
        await self.database.execute("DELETE FROM devboxes WHERE id = ?", (devbox_id,))

    # timeline

    async def insert_event(self, tx: Transaction, event: EventRecord) -> None:
        await tx.execute(
            "INSERT INTO devbox_events (id, devbox_id, type, snapshot_id, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.devbox_id,
                event.type,
                event.snapshot_id,
                json.dumps(event.detail),
                event.created_at,
            ),
        )

    async def events_for(self, devbox_ids: list[str]) -> dict[str, list[EventRecord]]:
        rows = await self._rows_by_devbox("devbox_events", "created_at, rowid", devbox_ids)
        return {devbox_id: [_event(r) for r in found] for devbox_id, found in rows.items()}

    # HTTP services (written by previews/; listed here for the devbox views)

    async def http_services_for(self, devbox_ids: list[str]) -> dict[str, list[Row]]:
        return await self._rows_by_devbox("http_services", "created_at, name", devbox_ids)

    async def _rows_by_devbox(
        self, table: str, order: str, devbox_ids: list[str]
    ) -> dict[str, list[Row]]:
        """One query for the rows of many devboxes, grouped by devbox (every id present)."""
        found: dict[str, list[Row]] = {i: [] for i in devbox_ids}
        if devbox_ids:
            marks = ",".join("?" * len(devbox_ids))
            rows = await self.database.fetch_all(
                f"SELECT * FROM {table} WHERE devbox_id IN ({marks}) ORDER BY {order}", devbox_ids
            )
            for row in rows:
                found[row["devbox_id"]].append(row)
        return found

    # snapshots

    async def insert_snapshot(self, tx: Transaction, snapshot: SnapshotRecord) -> None:
        await tx.execute(
            "INSERT INTO snapshots (id, org_id, user_id, devbox_id, name, kind, status, vcpus, "
            "memory_mb, disk_mb, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                snapshot.id,
                snapshot.org_id,
                snapshot.user_id,
                snapshot.devbox_id,
                snapshot.name,
                snapshot.kind,
                snapshot.status,
                snapshot.vcpus,
                snapshot.memory_mb,
                snapshot.disk_mb,
                snapshot.created_at,
            ),
        )

    async def snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        row = await self.database.fetch_one("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return _snapshot(row) if row else None

    async def snapshots_for_org(self, org_id: str) -> list[SnapshotRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM snapshots WHERE org_id = ? ORDER BY created_at", (org_id,)
        )
        return [_snapshot(r) for r in rows]

    async def all_snapshots(self) -> list[SnapshotRecord]:
        return [_snapshot(r) for r in await self.database.fetch_all("SELECT * FROM snapshots")]

    async def set_snapshot_status(self, snapshot_id: str, status: str) -> None:
        await self.database.execute(
            "UPDATE snapshots SET status = ? WHERE id = ?", (status, snapshot_id)
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.database.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
