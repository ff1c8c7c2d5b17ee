"""Agent-token routes (mint, list, revoke) and the audit log of their use."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from devbox_service.auth.agent_tokens import (
    AgentTokenList,
    AgentTokenRequest,
    AgentTokenResponse,
    AgentTokenService,
    AuditList,
)
from devbox_service.auth.guards import USER, CurrentPrincipal, allow, on_devbox
from devbox_service.auth.policy import Act
from devbox_service.devboxes.schemas import DeleteResponse


class AgentTokenController(Controller):
    path = "/api/devboxes/{devbox_id:str}"
    tags = ["agent tokens"]

    @post(
        "/agent-token",
        guards=[allow(on_devbox(Act.AGENT_TOKENS))],
        status_code=200,
        summary="Mint Agent Token",
    )
    async def mint(
        self,
        agent_tokens: NamedDependency[AgentTokenService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[AgentTokenRequest | None] = None,
    ) -> AgentTokenResponse:
        return await agent_tokens.mint(principal, devbox_id, data or AgentTokenRequest())

    @get("/agent-tokens", guards=[allow(on_devbox(Act.AGENT_TOKENS))], summary="List Agent Tokens")
    async def list_tokens(
        self,
        agent_tokens: NamedDependency[AgentTokenService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> AgentTokenList:
        return AgentTokenList(data=await agent_tokens.tokens(principal, devbox_id))

    @delete(
        "/agent-tokens/{token_id:str}",
        guards=[allow(on_devbox(Act.AGENT_TOKENS))],
        status_code=200,
        summary="Revoke Agent Token",
    )
    async def revoke(
        self,
        agent_tokens: NamedDependency[AgentTokenService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        token_id: FromPath[str],
    ) -> DeleteResponse:
        await agent_tokens.revoke(principal, devbox_id, token_id)
        return DeleteResponse(id=token_id, object="agent_token")


class AuditController(Controller):
    path = "/api/audit"
    tags = ["agent tokens"]

    @get("/", guards=[allow(USER)], summary="Agent Token Audit Log")
    async def audit(
        self,
        agent_tokens: NamedDependency[AgentTokenService],
        principal: CurrentPrincipal,
        devbox_id: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 200,
    ) -> AuditList:
        return AuditList(data=await agent_tokens.audit(principal, devbox_id, limit))
