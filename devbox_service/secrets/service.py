"""User secrets: values sealed at rest, readable one at a time, reachable by agent tokens
only through a live agent session and, when the token names them, only those names."""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.store import AgentTokenStore
from devbox_service.db import Database
from devbox_service.errors import InvalidInput, NotAuthenticated, NotFound, PermissionDenied
from devbox_service.secrets.box import SecretBox

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class SecretWrite(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    value: Annotated[str, Meta(max_length=65536)]
    metadata: dict[str, Any] | None = None


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    metadata: dict[str, Any]
    created_at: float
    updated_at: float


class SecretValueResponse(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    value: str


class SecretList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[SecretInfo]


class SecretService:
    def __init__(self, database: Database, box: SecretBox, agent_tokens: AgentTokenStore) -> None:
        self.database = database
        self.box = box
        self.agent_tokens = agent_tokens

    async def _admit(self, principal: Principal, name: str | None = None) -> None:
        if name is not None and not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(
                f"invalid secret name {name!r}: use letters, digits and '_' (an environment "
                "variable name), at most 128 characters",
                field="name",
            )
        if principal.kind is not PrincipalKind.AGENT:
            return
        if not await self.agent_tokens.session_exists(principal.session_id):
            raise NotAuthenticated("Agent token session not found (mint a new agent token)")
        allowed = principal.secret_names
        if name is not None and allowed is not None and name not in allowed:
            raise PermissionDenied(f"this agent token may not access secret {name!r}")

    async def list(self, principal: Principal) -> list[SecretInfo]:
        await self._admit(principal)
        rows = await self.database.fetch_all(
            "SELECT name, metadata, created_at, updated_at FROM user_secrets "
            "WHERE user_id = ? ORDER BY name",
            (principal.user_id,),
        )
        allowed = principal.secret_names
        return [
            SecretInfo(
                name=r["name"],
                metadata=json.loads(r["metadata"]),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in rows
            if allowed is None or r["name"] in allowed
        ]

    async def read(self, principal: Principal, name: str) -> SecretValueResponse:
        await self._admit(principal, name)
        row = await self.database.fetch_one(
            "SELECT value_sealed FROM user_secrets WHERE user_id = ? AND name = ?",
            (principal.user_id, name),
        )
        if row is None:
            raise NotFound.of("secret", name)
        return SecretValueResponse(name=name, value=self.box.open_sealed(row["value_sealed"]))

    async def write(self, principal: Principal, name: str, request: SecretWrite) -> SecretInfo:
        await self._admit(principal, name)
        now = time.time()
        metadata = request.metadata or {}
        await self.database.execute(
            "INSERT INTO user_secrets (user_id, name, value_sealed, metadata, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, name) DO UPDATE SET "
            "value_sealed = excluded.value_sealed, metadata = excluded.metadata, "
            "updated_at = excluded.updated_at",
            (principal.user_id, name, self.box.seal(request.value), json.dumps(metadata), now, now),
        )
        row = await self.database.fetch_one(
            "SELECT created_at FROM user_secrets WHERE user_id = ? AND name = ?",
            (principal.user_id, name),
        )
        created = row["created_at"] if row else now
        return SecretInfo(name=name, metadata=metadata, created_at=created, updated_at=now)

    async def delete(self, principal: Principal, name: str) -> None:
        await self._admit(principal, name)
        removed = await self.database.execute(
            "DELETE FROM user_secrets WHERE user_id = ? AND name = ?", (principal.user_id, name)
        )
        if not removed:
            raise NotFound.of("secret", name)
