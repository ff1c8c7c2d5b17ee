"""SQL for user secrets (the `user_secrets` table); values arrive and leave sealed."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.errors import ConfigError
from devbox_service.secrets.box import KEY_FILE


class SecretRecord(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    name: str
    value_sealed: str
    metadata: dict[str, Any]
    created_at: float
    updated_at: float


SECRETS = Table("user_secrets", SecretRecord, json_columns=["metadata"])


SECRET_BOX_FACT = "secret_box_fingerprint"


class SecretStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def bind_key(self, fingerprint: str) -> None:
        """The store's secrets are sealed with one key: the first process names it, every
        later one (another replica, a restart) must hold the same. Raises ConfigError."""
        async with self.database.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT value FROM store_facts WHERE name = ?", (SECRET_BOX_FACT,)
            )
            if row is None:
                await tx.execute(
                    "INSERT INTO store_facts (name, value, created_at) VALUES (?, ?, ?)",
                    (SECRET_BOX_FACT, fingerprint, time.time()),
                )
            elif row["value"] != fingerprint:
                raise ConfigError(
                    f"this data dir's {KEY_FILE} is not the key this store's secrets are "
                    f"sealed with: copy {KEY_FILE} from the data dir of the process that first "
                    "used this database (every replica holds the same one)"
                )

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
