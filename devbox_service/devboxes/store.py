"""SQL for devboxes and their timeline events (the `devboxes` and `devbox_events` tables)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from devbox_service.db import Database
from devbox_service.db.database import Transaction
from devbox_service.db.records import Table, rows_by_devbox
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventRecord

DEVBOXES = Table(
    "devboxes", DevboxRecord, json_columns=["metadata"], extra_columns=["ssh_token_hash"]
)
EVENTS = Table("devbox_events", EventRecord, json_columns=["detail"])

_UNSET = object()


DEVBOX_CHANGES = "devboxes"
"""The topic every write to a devbox row announces (its key: the devbox id)."""


class Changes:
    """A counter bumped at every write to a devbox row, by this process or another on the
    same database (the store's announcements), and a wait for the next bump: how a dashboard
    and `wait()` follow status changes without polling the table."""

    def __init__(self) -> None:
        self.version = 0
        self._bumped = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        bumped, self._bumped = self._bumped, asyncio.Event()
        bumped.set()

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it differs from `seen`, or after `timeout` seconds."""
        if self.version == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bumped.wait(), timeout)
        return self.version


class DevboxStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.changes = Changes()
        database.subscribe(DEVBOX_CHANGES, lambda _devbox_id: self.changes.bump())

    async def insert(
        self, tx: Transaction, record: DevboxRecord, event: EventRecord, *, ssh_token_hash: str
    ) -> None:
        """A new devbox and its first timeline entry, in the caller's transaction."""
        await DEVBOXES.insert(tx, record, ssh_token_hash=ssh_token_hash)
        await EVENTS.insert(tx, event)
        tx.announce(DEVBOX_CHANGES, record.id)

    async def get(self, devbox_id: str) -> DevboxRecord | None:
        row = await self.database.fetch_one("SELECT * FROM devboxes WHERE id = ?", (devbox_id,))
        return DEVBOXES.decode(row) if row else None

    async def all(self) -> list[DevboxRecord]:
        return DEVBOXES.decode_all(await self.database.fetch_all("SELECT * FROM devboxes"))

    async def ttl_expired(self, now: float) -> list[DevboxRecord]:
        """Devboxes whose TTL ran out by `now` (asked every second: only those are read)."""
        rows = await self.database.fetch_all(
            "SELECT * FROM devboxes WHERE ttl_expire_at <= ?", (now,)
        )
        return DEVBOXES.decode_all(rows)

    async def list_for_org(self, org_id: str) -> list[DevboxRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM devboxes WHERE org_id = ? ORDER BY created_at", (org_id,)
        )
        return DEVBOXES.decode_all(rows)

    async def by_ssh_token_hash(self, token_hash: str) -> DevboxRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM devboxes WHERE ssh_token_hash = ?", (token_hash,)
        )
        return DEVBOXES.decode(row) if row else None

    async def update(
        self,
        devbox_id: str,
        *,
        status: DevboxStatus | None = None,
        error: str | object | None = _UNSET,
        event: EventRecord | None = None,
        **fields: object,
    ) -> None:
        """Set columns of one devbox, bumping `updated_at`, and append `event` to its
        timeline in the same transaction. `error` is cleared when a status is set without
        one, so a devbox that recovers does not keep an old reason."""
        values = dict(fields)
        if status is not None:
            values["status"] = status
            values["error"] = None if error is _UNSET else error
        elif error is not _UNSET:
            values["error"] = error
        values["updated_at"] = time.time()
        encoded = DEVBOXES.encode_partial(values)
        assignments = ", ".join(f"{name} = ?" for name in encoded)
        async with self.database.transaction() as tx:
            await tx.execute(
                f"UPDATE devboxes SET {assignments} WHERE id = ?", (*encoded.values(), devbox_id)
            )
            if event is not None:
                await EVENTS.insert(tx, event)
            tx.announce(DEVBOX_CHANGES, devbox_id)

    async def add_event(self, event: EventRecord) -> None:
        async with self.database.transaction() as tx:
            await EVENTS.insert(tx, event)

    async def delete(self, devbox_id: str) -> None:
        async with self.database.transaction() as tx:
            await tx.execute("DELETE FROM disk_resizes WHERE devbox_id = ?", (devbox_id,))
            await tx.execute("DELETE FROM devboxes WHERE id = ?", (devbox_id,))
            tx.announce(DEVBOX_CHANGES, devbox_id)

    async def events_for(self, devbox_ids: Sequence[str]) -> dict[str, list[EventRecord]]:
        rows = await rows_by_devbox(self.database, "devbox_events", "created_at, seq", devbox_ids)
        return {devbox_id: EVENTS.decode_all(found) for devbox_id, found in rows.items()}
