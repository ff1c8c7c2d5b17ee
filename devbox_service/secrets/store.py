"""SQL for user secrets (the `user_secrets` table); values arrive and leave sealed."""

from __future__ import annotations

from typing import Any

import msgspec

from devbox_service.db import Database
from devbox_service.db.records import Table


class SecretRecord(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    name: str
    value_sealed: str
    metadata: dict[str, Any]
    created_at: float
    updated_at: float


SECRETS = Table("user_secrets", SecretRecord, json_columns=["metadata"])


class SecretStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def for_user(self, user_id: str) -> list[SecretRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM user_secrets WHERE user_id = ? ORDER BY name", (user_id,)
        )
        return SECRETS.decode_all(rows)

    async def get(self, user_id: str, name: str) -> SecretRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM user_secrets WHERE user_id = ? AND name = ?", (user_id, name)
        )
        return SECRETS.decode(row) if row else None

    async def upsert(self, secret: SecretRecord) -> SecretRecord:
        """Insert or replace value and metadata; the first `created_at` is kept."""
        async with self.database.transaction() as tx:
            await SECRETS.insert(tx, secret, upsert_on=("user_id", "name"), keep=("created_at",))
            row = await tx.fetch_one(
                "SELECT * FROM user_secrets WHERE user_id = ? AND name = ?",
                (secret.user_id, secret.name),
            )
        assert row is not None
        return SECRETS.decode(row)

    async def delete(self, user_id: str, name: str) -> bool:
        removed = await self.database.execute(
            "DELETE FROM user_secrets WHERE user_id = ? AND name = ?", (user_id, name)
        )
        return removed > 0
