"""`/api/user-secrets`: the caller's secrets (agent tokens need the secrets scopes)."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.params import FromPath, JSONBody

from devbox_service.auth.guards import CurrentPrincipal, agent_scope, allow
from devbox_service.auth.scopes import AgentScope
from devbox_service.devboxes.schemas import DeleteResponse
from devbox_service.secrets.service import (
    SecretInfo,
    SecretList,
    SecretValueResponse,
    SecretWrite,
)
from devbox_service.services import AppServices

READ = agent_scope(AgentScope.SECRETS_READ)
WRITE = agent_scope(AgentScope.SECRETS_WRITE)


class UserSecretController(Controller):
    path = "/api/user-secrets"
    tags = ["secrets"]

    @get("/", guards=[allow(READ)], summary="List user secrets (names and metadata)")
    async def list_secrets(self, services: AppServices, principal: CurrentPrincipal) -> SecretList:
        return SecretList(data=await services.secrets.list(principal))

    @get("/{name:str}", guards=[allow(READ)], summary="Get user secret by name")
    async def read(
        self, services: AppServices, principal: CurrentPrincipal, name: FromPath[str]
    ) -> SecretValueResponse:
        return await services.secrets.read(principal, name)

    @put("/{name:str}", guards=[allow(WRITE)], summary="Create or update a user secret")
    async def write(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        name: FromPath[str],
        data: JSONBody[SecretWrite],
    ) -> SecretInfo:
        return await services.secrets.write(principal, name, data)

    @delete("/{name:str}", guards=[allow(WRITE)], status_code=200, summary="Delete a user secret")
    async def delete_secret(
        self, services: AppServices, principal: CurrentPrincipal, name: FromPath[str]
    ) -> DeleteResponse:
        await services.secrets.delete(principal, name)
        return DeleteResponse(id=name, object="user_secret")
