"""SQL for agent tokens, their sessions, and the audit log of what they were allowed to do."""

from __future__ import annotations

import time

from devbox_service.auth.models import AgentTokenRecord, AuditEntry, Principal, PrincipalKind, Role
from devbox_service.auth.store import LastUsed
from devbox_service.db import Database
from devbox_service.db.records import Table

AGENT_TOKENS = Table(
    "agent_tokens",
    AgentTokenRecord,
    json_columns=["scopes", "secret_names"],
    extra_columns=["token_hash"],
)
AUDIT_LOG = Table("audit_log", AuditEntry)


class AgentTokenStore:
    """Agent tokens, their sessions, and the audit log of what they were allowed to do."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._use = LastUsed(database, "agent_tokens")

    async def insert(self, record: AgentTokenRecord, token_hash: str) -> None:
        async with self.database.transaction() as tx:
            if record.session_id is not None:
                await tx.execute(
                    "INSERT INTO agent_sessions (id, user_id, created_at) VALUES (?, ?, ?)",
                    (record.session_id, record.user_id, record.created_at),
                )
            await AGENT_TOKENS.insert(tx, record, token_hash=token_hash)

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
        token = AGENT_TOKENS.decode(row)
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
        await self._use.touch(token_id)

    async def for_devbox(self, devbox_id: str) -> list[AgentTokenRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM agent_tokens WHERE devbox_id = ? ORDER BY created_at", (devbox_id,)
        )
        return AGENT_TOKENS.decode_all(rows)

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
            "SELECT * FROM audit_log WHERE user_id = ? "
            "AND (CAST(? AS TEXT) IS NULL OR devbox_id = ?) ORDER BY id DESC LIMIT ?",
            (user_id, devbox_id, devbox_id, limit),
        )
        return AUDIT_LOG.decode_all(rows)
