"""SQL for the snapshots users saved (the `snapshots` table; image boot snapshots belong to
the backend)."""

from __future__ import annotations

from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.devboxes.models import SnapshotRecord, SnapshotStatus

SNAPSHOTS = Table("snapshots", SnapshotRecord, json_columns=["metadata"])


class SnapshotStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def insert(self, snapshot: SnapshotRecord) -> None:
        async with self.database.transaction() as tx:
            await SNAPSHOTS.insert(tx, snapshot)

    async def get(self, snapshot_id: str) -> SnapshotRecord | None:
        row = await self.database.fetch_one("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return SNAPSHOTS.decode(row) if row else None

    async def for_org(self, org_id: str) -> list[SnapshotRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM snapshots WHERE org_id = ? ORDER BY created_at", (org_id,)
        )
        return SNAPSHOTS.decode_all(rows)

    async def all(self) -> list[SnapshotRecord]:
        return SNAPSHOTS.decode_all(await self.database.fetch_all("SELECT * FROM snapshots"))

    async def ttl_expired(self, now: float) -> list[SnapshotRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM snapshots WHERE ttl_expire_at <= ?", (now,)
        )
        return SNAPSHOTS.decode_all(rows)

    async def set_status(self, snapshot_id: str, status: SnapshotStatus) -> None:
        await self.database.execute(
            "UPDATE snapshots SET status = ? WHERE id = ?", (status.value, snapshot_id)
        )

    async def by_digest(self, org_id: str, digest: str) -> SnapshotRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM snapshots WHERE org_id = ? AND digest = ? AND status = 'ready' "
            "ORDER BY created_at LIMIT 1",
            (org_id, digest),
        )
        return SNAPSHOTS.decode(row) if row else None

    async def label(self, snapshot_id: str, digest: str | None, metadata: dict[str, str]) -> None:
        """Set a snapshot's digest and (the whole of) its metadata."""
        encoded = SNAPSHOTS.encode_partial({"digest": digest, "metadata": metadata})
        await self.database.execute(
            "UPDATE snapshots SET digest = ?, metadata = ? WHERE id = ?",
            (encoded["digest"], encoded["metadata"], snapshot_id),
        )

    async def set_ttl(self, snapshot_id: str, **fields: object) -> None:
        """Set some of `ttl_seconds`, `ttl_expire_at`, `ttl_waiting_for`."""
        encoded = SNAPSHOTS.encode_partial(fields)
        assignments = ", ".join(f"{name} = ?" for name in encoded)
        await self.database.execute(
            f"UPDATE snapshots SET {assignments} WHERE id = ?", (*encoded.values(), snapshot_id)
        )

    async def delete(self, snapshot_id: str) -> None:
        await self.database.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
