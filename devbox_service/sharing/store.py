"""SQL for aliases (the `aliases` table)."""

from __future__ import annotations

from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.sharing.models import AliasRecord, Visibility

ALIASES = Table("aliases", AliasRecord)


class AliasStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def upsert(self, record: AliasRecord) -> None:
        """A new alias, or one moved to another template (its first `created_at` kept)."""
        async with self.database.transaction() as tx:
            await ALIASES.insert(tx, record, upsert_on=("alias",), keep=("created_at",))

    async def get(self, alias: str) -> AliasRecord | None:
        row = await self.database.fetch_one("SELECT * FROM aliases WHERE alias = ?", (alias,))
        return ALIASES.decode(row) if row else None

    async def delete(self, alias: str, org_id: str) -> None:
        await self.database.execute(
            "DELETE FROM aliases WHERE alias = ? AND org_id = ?", (alias, org_id)
        )

    async def visible_to(self, org_id: str) -> list[AliasRecord]:
        """The organization's aliases and every public one."""
        rows = await self.database.fetch_all(
            "SELECT * FROM aliases WHERE org_id = ? OR visibility = ? ORDER BY alias",
            (org_id, Visibility.PUBLIC.value),
        )
        return ALIASES.decode_all(rows)

    async def public_for_template(self, template_id: str) -> bool:
        row = await self.database.fetch_one(
            "SELECT 1 FROM aliases WHERE template_id = ? AND visibility = ?",
            (template_id, Visibility.PUBLIC.value),
        )
        return row is not None
