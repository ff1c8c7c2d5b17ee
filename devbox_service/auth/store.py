"""SQL for users, organizations, memberships and API keys."""

from __future__ import annotations

import json
import time

from devbox_service.auth.models import (
    AgentTokenRecord,
    ApiKeyRecord,
    AuditEntry,
    Membership,
    Org,
    Principal,
    PrincipalKind,
    Role,
    User,
)
from devbox_service.db import Database, Row
from devbox_service.db.database import Transaction

_KEY_COLUMNS = """
    k.id, k.user_id, u.name AS user_name, k.org_id, o.name AS org_name, k.prefix, k.name,
    k.created_at, k.last_used_at, k.revoked_at
"""


def _key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        org_id=row["org_id"],
        org_name=row["org_name"],
        prefix=row["prefix"],
        name=row["name"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class IdentityStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def is_empty(self) -> bool:
        row = await self.database.fetch_one("SELECT COUNT(*) FROM users")
        return row is None or row[0] == 0

    async def insert_user(self, tx: Transaction, user: User) -> None:
        await tx.execute(
            "INSERT INTO users (id, name, is_admin, created_at) VALUES (?, ?, ?, ?)",
            (user.id, user.name, int(user.is_admin), user.created_at),
        )

    async def insert_org(self, tx: Transaction, org: Org) -> None:
        await tx.execute(
            "INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)",
            (org.id, org.name, org.created_at),
        )

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
        return _user(row) if row else None

    async def org_by_name(self, name: str) -> Org | None:
        row = await self.database.fetch_one("SELECT * FROM orgs WHERE name = ?", (name,))
        return _org(row) if row else None

    async def users(self) -> list[User]:
        return [
            _user(r) for r in await self.database.fetch_all("SELECT * FROM users ORDER BY name")
        ]

    async def orgs(self) -> list[Org]:
        return [_org(r) for r in await self.database.fetch_all("SELECT * FROM orgs ORDER BY name")]

    async def memberships(self, org_id: str | None = None) -> list[Membership]:
        rows = await self.database.fetch_all(
            "SELECT m.org_id, o.name AS org_name, m.user_id, u.name AS user_name, m.role "
            "FROM org_members m JOIN orgs o ON o.id = m.org_id JOIN users u ON u.id = m.user_id "
            "WHERE (? IS NULL OR m.org_id = ?) ORDER BY o.name, u.name",
            (org_id, org_id),
        )
        return [
            Membership(
                org_id=r["org_id"],
                org_name=r["org_name"],
                user_id=r["user_id"],
                user_name=r["user_name"],
                role=Role(r["role"]),
            )
            for r in rows
        ]

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
        return [_key(r) for r in rows]

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self.database.fetch_one(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id "
            "JOIN orgs o ON o.id = k.org_id WHERE k.id = ?",
            (key_id,),
        )
        return _key(row) if row else None

    async def revoke_key(self, key_id: str) -> bool:
        changed = await self.database.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return changed > 0

    async def principal_for_key_hash(self, key_hash: str) -> Principal | None:
        """The caller behind a live key; the key must still be a member of its org."""
        row = await self.database.fetch_one(
            "SELECT k.id, k.user_id, u.name AS user_name, u.is_admin, k.org_id, m.role "
            "FROM api_keys k JOIN users u ON u.id = k.user_id "
            "JOIN org_members m ON m.org_id = k.org_id AND m.user_id = k.user_id "
            "WHERE k.key_hash = ? AND k.revoked_at IS NULL",
            (key_hash,),
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

    async def touch_key(self, key_id: str) -> None:
        await touch(self.database, "api_keys", key_id)


def _user(row: Row) -> User:
    return User(
        id=row["id"], name=row["name"], is_admin=bool(row["is_admin"]), created_at=row["created_at"]
    )


def _org(row: Row) -> Org:
    return Org(id=row["id"], name=row["name"], created_at=row["created_at"])


LAST_USED_RESOLUTION = 60.0


async def touch(database: Database, table: str, credential_id: str) -> None:
    """Record a credential's use at most once a minute: every request authenticates, and a
    write per request would serialise the API on SQLite's single writer."""
    now = time.time()
    await database.execute(
        f"UPDATE {table} SET last_used_at = ? "
        "WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        (now, credential_id, now - LAST_USED_RESOLUTION),
    )


def _agent_token(row: Row) -> AgentTokenRecord:
    names = row["secret_names"]
    return AgentTokenRecord(
        id=row["id"],
        user_id=row["user_id"],
        org_id=row["org_id"],
        devbox_id=row["devbox_id"],
        session_id=row["session_id"],
        scopes=json.loads(row["scopes"]),
        secret_names=json.loads(names) if names is not None else None,
        purpose=row["purpose"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class AgentTokenStore:
    """Agent tokens, their sessions, and the audit log of what they were allowed to do."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def insert(self, record: AgentTokenRecord, token_hash: str) -> None:
        async with self.database.transaction() as tx:
            if record.session_id is not None:
                await tx.execute(
                    "INSERT INTO agent_sessions (id, user_id, created_at) VALUES (?, ?, ?)",
                    (record.session_id, record.user_id, record.created_at),
                )
            await tx.execute(
                "INSERT INTO agent_tokens (id, token_hash, user_id, org_id, devbox_id, "
                "session_id, scopes, secret_names, purpose, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    token_hash,
                    record.user_id,
                    record.org_id,
                    record.devbox_id,
                    record.session_id,
                    json.dumps(record.scopes),
                    None if record.secret_names is None else json.dumps(record.secret_names),
                    record.purpose,
                    record.created_at,
                ),
            )

    async def principal_for_hash(self, token_hash: str) -> Principal | None:
        """The caller behind a live agent token, with the user's current role in the org."""
        row = await self.database.fetch_one(
            "SELECT t.*, u.name AS user_name, m.role FROM agent_tokens t "
            "JOIN users u ON u.id = t.user_id "
            "JOIN org_members m ON m.org_id = t.org_id AND m.user_id = t.user_id "
            "WHERE t.token_hash = ? AND t.revoked_at IS NULL",
            (token_hash,),
        )
        if row is None:
            return None
        token = _agent_token(row)
        return Principal(
            kind=PrincipalKind.AGENT,
            credential_id=token.id,
            user_id=token.user_id,
            user_name=row["user_name"],
            org_id=token.org_id,
            role=Role(row["role"]),
            devbox_id=token.devbox_id,
            scopes=frozenset(token.scopes),
            purpose=token.purpose,
            session_id=token.session_id,
            secret_names=None if token.secret_names is None else frozenset(token.secret_names),
        )

    async def touch(self, token_id: str) -> None:
        await touch(self.database, "agent_tokens", token_id)

    async def for_devbox(self, devbox_id: str) -> list[AgentTokenRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM agent_tokens WHERE devbox_id = ? ORDER BY created_at", (devbox_id,)
        )
        return [_agent_token(r) for r in rows]

    async def revoke(self, devbox_id: str, token_id: str) -> bool:
        changed = await self.database.execute(
            "UPDATE agent_tokens SET revoked_at = ? "
            "WHERE id = ? AND devbox_id = ? AND revoked_at IS NULL",
            (time.time(), token_id, devbox_id),
        )
        return changed > 0

    async def revoke_all(self, devbox_id: str) -> None:
        await self.database.execute(
            "UPDATE agent_tokens SET revoked_at = ? WHERE devbox_id = ? AND revoked_at IS NULL",
            (time.time(), devbox_id),
        )

    async def session_exists(self, session_id: str | None) -> bool:
        if session_id is None:
            return False
        row = await self.database.fetch_one(
            "SELECT 1 FROM agent_sessions WHERE id = ?", (session_id,)
        )
        return row is not None

    async def audit(
        self, principal: Principal, *, method: str, route: str, allowed: bool, reason: str
    ) -> None:
        await self.database.execute(
            "INSERT INTO audit_log (created_at, user_id, devbox_id, token_id, purpose, method, "
            "route, allowed, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                principal.user_id,
                principal.devbox_id,
                principal.credential_id,
                principal.purpose,
                method,
                route,
                int(allowed),
                reason,
            ),
        )

    async def audit_entries(
        self, user_id: str, devbox_id: str | None, limit: int
    ) -> list[AuditEntry]:
        rows = await self.database.fetch_all(
            "SELECT * FROM audit_log WHERE user_id = ? AND (? IS NULL OR devbox_id = ?) "
            "ORDER BY id DESC LIMIT ?",
            (user_id, devbox_id, devbox_id, limit),
        )
        return [
            AuditEntry(
                id=r["id"],
                created_at=r["created_at"],
                devbox_id=r["devbox_id"],
                token_id=r["token_id"],
                purpose=r["purpose"],
                method=r["method"],
                route=r["route"],
                allowed=bool(r["allowed"]),
                reason=r["reason"],
            )
            for r in rows
        ]
