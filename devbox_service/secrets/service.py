"""User secrets: values sealed at rest, readable one at a time, reachable by agent tokens
only through a live agent session and, when the token names them, only those names."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from devbox_service.auth.agent_token_store import AgentTokenStore
from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.errors import InvalidInput, NotAuthenticated, NotFound, PermissionDenied
from devbox_service.secrets.box import SecretBox
from devbox_service.secrets.store import SecretRecord, SecretStore

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
    def __init__(self, store: SecretStore, box: SecretBox, agent_tokens: AgentTokenStore) -> None:
        self._store = store
        self._box = box
        self._agent_tokens = agent_tokens

    async def _admit(self, principal: Principal, name: str | None = None) -> None:
        if name is not None and not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(
                f"invalid secret name {name!r}: use letters, digits and '_' (an environment "
                "variable name), at most 128 characters",
                field="name",
            )
        if principal.kind is not PrincipalKind.AGENT:
            return
        if not await self._agent_tokens.session_exists(principal.session_id):
            raise NotAuthenticated("Agent token session not found (mint a new agent token)")
        allowed = principal.secret_names
        if name is not None and allowed is not None and name not in allowed:
            raise PermissionDenied(f"this agent token may not access secret {name!r}")

    async def list(self, principal: Principal) -> list[SecretInfo]:
        """Names and metadata, never values; an agent token sees only the names it may read."""
        await self._admit(principal)
        allowed = principal.secret_names
        return [
            _info(s)
            for s in await self._store.for_user(principal.user_id)
            if allowed is None or s.name in allowed
        ]

    async def read(self, principal: Principal, name: str) -> SecretValueResponse:
        """Raises InvalidInput, NotFound, NotAuthenticated/PermissionDenied (agent tokens)."""
        await self._admit(principal, name)
        secret = await self._store.get(principal.user_id, name)
        if secret is None:
            raise NotFound.of("secret", name)
        return SecretValueResponse(name=name, value=self._box.open_sealed(secret.value_sealed))

    async def write(self, principal: Principal, name: str, request: SecretWrite) -> SecretInfo:
        await self._admit(principal, name)
        now = time.time()
        stored = await self._store.upsert(
            SecretRecord(
                user_id=principal.user_id,
                name=name,
                value_sealed=self._box.seal(request.value),
                metadata=request.metadata or {},
                created_at=now,
                updated_at=now,
            )
        )
        return _info(stored)

    async def delete(self, principal: Principal, name: str) -> None:
        await self._admit(principal, name)
        if not await self._store.delete(principal.user_id, name):
            raise NotFound.of("secret", name)


def _info(secret: SecretRecord) -> SecretInfo:
    """The record without its sealed value."""
    return msgspec.convert(secret, SecretInfo, from_attributes=True)
