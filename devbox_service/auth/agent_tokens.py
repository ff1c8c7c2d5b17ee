"""Devbox agent tokens: minted by a devbox's owner, bound to that devbox and a scope set,
never expiring, so they can be listed, revoked, and audited instead."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from msgspec import Meta

from devbox_service.auth import scopes, tokens
from devbox_service.auth.agent_token_store import AgentTokenStore
from devbox_service.auth.models import AgentTokenRecord, AuditEntry, Principal
from devbox_service.auth.policy import Act
from devbox_service.auth.scopes import AgentScope
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.models import DevboxRecord
from devbox_service.devboxes.service import DevboxService
from devbox_service.errors import DevboxServiceError, NotFound, Unreachable
from devbox_service.ids import new_id

SecretName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]

GUEST_ENV_FILE = "/root/.devbox/agent.env"
GUEST_PROFILE_SNIPPET = "/etc/profile.d/devbox-agent.sh"


class AgentTokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scopes: list[AgentScope] | None = None
    purpose: Annotated[str, Meta(max_length=200)] = ""
    ttl_seconds: int | None = None  # accepted and ignored: tokens never expire
    secret_names: list[SecretName] | None = None  # beyond the contract: limit secrets access
    inject: bool = False  # beyond the contract: write the token into the devbox


class AgentTokenResponse(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    id: str
    devbox_id: str
    user_id: str
    org_id: str
    scopes: list[str]
    purpose: str
    expires_at: None = None
    secret_names: list[str] | None = None
    injected: bool = False


class AgentTokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    devbox_id: str
    scopes: list[str]
    purpose: str
    secret_names: list[str] | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class AgentTokenList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[AgentTokenInfo]


class AuditList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[AuditEntry]


class AgentTokenService:
    def __init__(
        self,
        store: AgentTokenStore,
        devboxes: DevboxService,
        guests: GuestAccess,
        guest_service_url: str,
    ) -> None:
        self._store = store
        self._devboxes = devboxes
        self._guests = guests
        self._guest_service_url = guest_service_url
        devboxes.on_destroy(self._revoke_all, required=True)  # a token must not outlive it

    async def _revoke_all(self, devbox_id: str) -> None:
        await self._store.revoke_all(devbox_id)

    async def _owned(self, principal: Principal, devbox_id: str) -> DevboxRecord:
        return await self._devboxes.visible(principal, devbox_id, Act.AGENT_TOKENS)

    async def mint(
        self, principal: Principal, devbox_id: str, request: AgentTokenRequest
    ) -> AgentTokenResponse:
        await self._owned(principal, devbox_id)
        if request.inject:
            await self._guests.usable(principal, devbox_id, Act.AGENT_TOKENS)
        granted = scopes.granted(
            request.scopes,
            injected=request.inject,
            secret_names=request.secret_names,
        )
        secret = tokens.new_secret(tokens.AGENT_TOKEN_PREFIX)
        record = AgentTokenRecord(
            id=new_id("agenttoken"),
            user_id=principal.user_id,
            org_id=principal.org_id,
            devbox_id=devbox_id,
            session_id=new_id("agentsession"),
            scopes=granted,
            secret_names=None
            if request.secret_names is None
            else sorted(set(request.secret_names)),
            purpose=request.purpose,
            created_at=time.time(),
            last_used_at=None,
            revoked_at=None,
        )
        await self._store.insert(record, tokens.hash_secret(secret))
        if request.inject:
            try:
                await self._inject(principal, devbox_id, secret)
            except Exception as exc:
                await self._store.revoke(devbox_id, record.id)
                if isinstance(exc, DevboxServiceError):
                    raise
                raise Unreachable(f"could not write the token into the devbox: {exc}") from exc
        return AgentTokenResponse(
            token=secret,
            id=record.id,
            devbox_id=devbox_id,
            user_id=record.user_id,
            org_id=record.org_id,
            scopes=granted,
            purpose=record.purpose,
            secret_names=record.secret_names,
            injected=request.inject,
        )

    async def _inject(self, principal: Principal, devbox_id: str, secret: str) -> None:
        """A 0600 env file and a profile snippet, so an agent started in a login shell finds
        the token without it ever appearing on a command line."""
        env = (
            f"export DEVBOX_AGENT_TOKEN='{secret}'\n"
            f"export DEVBOX_ID='{devbox_id}'\n"
            f"export DEVBOX_SERVICE_BASE_URL='{self._guest_service_url}'\n"
        )
        write = self._guests.write_file
        await write(principal, devbox_id, GUEST_ENV_FILE, env.encode(), mode=0o600)
        snippet = f"[ -r {GUEST_ENV_FILE} ] && . {GUEST_ENV_FILE}\n"
        await write(principal, devbox_id, GUEST_PROFILE_SNIPPET, snippet.encode())

    async def tokens(self, principal: Principal, devbox_id: str) -> list[AgentTokenInfo]:
        await self._owned(principal, devbox_id)
        records = await self._store.for_devbox(devbox_id)
        return msgspec.convert(records, list[AgentTokenInfo], from_attributes=True)

    async def revoke(self, principal: Principal, devbox_id: str, token_id: str) -> None:
        await self._owned(principal, devbox_id)
        if not await self._store.revoke(devbox_id, token_id):
            raise NotFound.of("live agent token", token_id)

    async def audit(
        self, principal: Principal, devbox_id: str | None, limit: int
    ) -> list[AuditEntry]:
        return await self._store.audit_entries(principal.user_id, devbox_id, limit)
