"""SQL for users, organizations, memberships and API keys."""

from __future__ import annotations

import time

from devbox_service.auth.models import (
    ApiKeyRecord,
    Membership,
    Org,
    Principal,
    PrincipalKind,
    Role,
    User,
)
from devbox_service.db import Database
from devbox_service.db.cache import VersionedCache
from devbox_service.db.database import Transaction
from devbox_service.db.records import Table

_KEY_COLUMNS = """
    k.id, k.user_id, u.name AS user_name, k.org_id, o.name AS org_name, k.prefix, k.name,
    k.created_at, k.last_used_at, k.revoked_at
"""


USERS = Table("users", User)
ORGS = Table("orgs", Org)
API_KEYS = Table("api_keys", ApiKeyRecord)  # read through a join that adds the names
MEMBERSHIPS = Table("org_members", Membership)


class IdentityStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._key_use = LastUsed(database, "api_keys")
        self._principals: VersionedCache[str, Principal] = VersionedCache(database)

    async def is_empty(self) -> bool:
        row = await self.database.fetch_one("SELECT COUNT(*) FROM users")
        return row is None or row[0] == 0

    async def insert_user(self, tx: Transaction, user: User) -> None:
        await USERS.insert(tx, user)

    async def insert_org(self, tx: Transaction, org: Org) -> None:
        await ORGS.insert(tx, org)

    async def upsert_member(self, tx: Transaction, org_id: str, user_id: str, role: Role) -> None:
        await tx.execute(
            "INSERT INTO org_members (org_id, user_id, role, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
            (org_id, user_id, role.value, time.time()),
        )

    async def insert_key(
        self,
        tx: Transaction,
        *,
        key_id: str,
        user_id: str,
        org_id: str,
        key_hash: str,
        prefix: str,
        name: str,
        created_at: float,
    ) -> None:
        await tx.execute(
            "INSERT INTO api_keys (id, user_id, org_id, key_hash, prefix, name, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_id, user_id, org_id, key_hash, prefix, name, created_at),
        )

    async def user_by_name(self, name: str) -> User | None:
        row = await self.database.fetch_one("SELECT * FROM users WHERE name = ?", (name,))
        return USERS.decode(row) if row else None

    async def org_by_name(self, name: str) -> Org | None:
        row = await self.database.fetch_one("SELECT * FROM orgs WHERE name = ?", (name,))
        return ORGS.decode(row) if row else None

    async def users(self) -> list[User]:
        return USERS.decode_all(await self.database.fetch_all("SELECT * FROM users ORDER BY name"))

    async def orgs(self) -> list[Org]:
        return ORGS.decode_all(await self.database.fetch_all("SELECT * FROM orgs ORDER BY name"))

    async def memberships(self, org_id: str | None = None) -> list[Membership]:
        rows = await self.database.fetch_all(
            "SELECT m.org_id, o.name AS org_name, m.user_id, u.name AS user_name, m.role "
            "FROM org_members m JOIN orgs o ON o.id = m.org_id JOIN users u ON u.id = m.user_id "
            "WHERE (CAST(? AS TEXT) IS NULL OR m.org_id = ?) ORDER BY o.name, u.name",
            (org_id, org_id),
        )
        return MEMBERSHIPS.decode_all(rows)

    async def delete_member(self, tx: Transaction, org_id: str, user_id: str) -> None:
        await tx.execute(
            "DELETE FROM org_members WHERE org_id = ? AND user_id = ?", (org_id, user_id)
        )

    async def role_in(self, org_id: str, user_id: str) -> Role | None:
        row = await self.database.fetch_one(
            "SELECT role FROM org_members WHERE org_id = ? AND user_id = ?", (org_id, user_id)
        )
        return Role(row["role"]) if row else None

    async def keys(self) -> list[ApiKeyRecord]:
        rows = await self.database.fetch_all(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id "
            "JOIN orgs o ON o.id = k.org_id ORDER BY k.created_at"
        )
        return API_KEYS.decode_all(rows)

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self.database.fetch_one(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id "
            "JOIN orgs o ON o.id = k.org_id WHERE k.id = ?",
            (key_id,),
        )
        return API_KEYS.decode(row) if row else None

    async def revoke_key(self, key_id: str) -> bool:
        changed = await self.database.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return changed > 0

    async def principal_for_key_hash(self, key_hash: str) -> Principal | None:
        """The caller behind a live key; the key must still be a member of its org.

        Every request asks this, so answers are kept until the database changes at all (a
        revocation or a membership change, by this process or the CLI, is seen at once)."""
        known, version = self._principals.lookup(key_hash)
        if known is not None:
            return known
        principal = await self._principal("k.key_hash = ?", (key_hash,))
        if principal is not None:
            self._principals.store(key_hash, principal, version)
        return principal

    async def _principal(self, where: str, params: tuple[object, ...]) -> Principal | None:
        row = await self.database.fetch_one(
            "SELECT k.id, k.user_id, u.name AS user_name, u.is_admin, k.org_id, m.role "
            "FROM api_keys k JOIN users u ON u.id = k.user_id "
            "JOIN org_members m ON m.org_id = k.org_id AND m.user_id = k.user_id "
            f"WHERE {where} AND k.revoked_at IS NULL",
            params,
        )
        if row is None:
            return None
        return Principal(
            kind=PrincipalKind.USER,
            credential_id=row["id"],
            user_id=row["user_id"],
            user_name=row["user_name"],
            org_id=row["org_id"],
            role=Role(row["role"]),
            is_admin=bool(row["is_admin"]),
        )

    # dashboard sessions

    async def insert_web_session(
        self, session_id: str, secret_hash: str, api_key_id: str, expires_at: float
    ) -> None:
        await self.database.execute(
            "INSERT INTO web_sessions (id, secret_hash, api_key_id, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (session_id, secret_hash, api_key_id, time.time(), expires_at),
        )

    async def principal_for_web_session(self, secret_hash: str) -> Principal | None:
        """The session's user, while the session is unexpired and its API key is live."""
        return await self._principal(
            "k.id = (SELECT api_key_id FROM web_sessions WHERE secret_hash = ? AND expires_at > ?)",
            (secret_hash, time.time()),
        )

    async def delete_web_session(self, secret_hash: str) -> None:
        await self.database.execute(
            "DELETE FROM web_sessions WHERE secret_hash = ?", (secret_hash,)
        )

    async def delete_expired_web_sessions(self) -> int:
        return await self.database.execute(
            "DELETE FROM web_sessions WHERE expires_at <= ?", (time.time(),)
        )

    async def touch_key(self, key_id: str) -> None:
        await self._key_use.touch(key_id)


LAST_USED_RESOLUTION = 60.0


class LastUsed:
    """Records a credential's use at most once a minute: every request authenticates, and a
    write per request would serialise the API on SQLite's single writer. What was written
    lately is remembered here, so most requests do not even ask the database."""

    def __init__(self, database: Database, table: str) -> None:
        self._database = database
        self._table = table
        self._written: dict[str, float] = {}

    async def touch(self, credential_id: str) -> None:
        now = time.time()
        if now - self._written.get(credential_id, 0.0) < LAST_USED_RESOLUTION:
            return
        if len(self._written) > 100_000:  # a bound, not a policy: forget and write again
            self._written.clear()
        self._written[credential_id] = now
        await self._database.execute(
            f"UPDATE {self._table} SET last_used_at = ? "
            "WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            (now, credential_id, now - LAST_USED_RESOLUTION),
        )
