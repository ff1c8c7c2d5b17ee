"""`/api/user-secrets`: the caller's secrets (agent tokens need the secrets scopes)."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from devbox_service.auth.guards import CurrentPrincipal, agent_scope, allow
from devbox_service.auth.scopes import AgentScope
from devbox_service.devboxes.schemas import DeleteResponse
from devbox_service.secrets.service import (
    SecretInfo,
    SecretList,
    SecretService,
    SecretValueResponse,
    SecretWrite,
)

READ = agent_scope(AgentScope.SECRETS_READ)
WRITE = agent_scope(AgentScope.SECRETS_WRITE)


class UserSecretController(Controller):
    path = "/api/user-secrets"
    tags = ["secrets"]

    @get("/", guards=[allow(READ)], summary="List user secrets (names and metadata)")
    async def list_secrets(
        self, secrets: NamedDependency[SecretService], principal: CurrentPrincipal
    ) -> SecretList:
        return SecretList(data=await secrets.list(principal))

    @get("/{name:str}", guards=[allow(READ)], summary="Get user secret by name")
    async def read(
        self,
        secrets: NamedDependency[SecretService],
        principal: CurrentPrincipal,
        name: FromPath[str],
    ) -> SecretValueResponse:
        return await secrets.read(principal, name)

    @put("/{name:str}", guards=[allow(WRITE)], summary="Create or update a user secret")
    async def write(
        self,
        secrets: NamedDependency[SecretService],
        principal: CurrentPrincipal,
        name: FromPath[str],
        data: JSONBody[SecretWrite],
    ) -> SecretInfo:
        return await secrets.write(principal, name, data)

    @delete("/{name:str}", guards=[allow(WRITE)], status_code=200, summary="Delete a user secret")
    async def delete_secret(
        self,
        secrets: NamedDependency[SecretService],
        principal: CurrentPrincipal,
        name: FromPath[str],
    ) -> DeleteResponse:
        await secrets.delete(principal, name)
        return DeleteResponse(id=name, object="user_secret")
