"""Share links: `POST /api/templates/{id}/share`, `/api/aliases...`, the shared template view,
and the page a short link opens (`/s/{alias}`)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from devbox_service.auth.guards import USER, CurrentPrincipal, allow
from devbox_service.devbox_templates.schemas import TemplateDetail
from devbox_service.sharing.models import (
    AliasList,
    AliasResponse,
    AliasSearchResponse,
    Match,
    TemplateShareRequest,
    TemplateShareResponse,
)
from devbox_service.sharing.service import SharingService


class ShareController(Controller):
    path = "/api/templates"
    tags = ["templates"]

    @post(
        "/{template_id:str}/share", guards=[allow(USER)], status_code=200, summary="Share Template"
    )
    async def share(
        self,
        sharing: NamedDependency[SharingService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        data: JSONBody[TemplateShareRequest],
    ) -> TemplateShareResponse:
        return await sharing.share(principal, template_id, data)

    @get("/shared/{template_id:str}", guards=[allow(USER)], summary="Get Shared Template")
    async def shared(
        self,
        sharing: NamedDependency[SharingService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
    ) -> TemplateDetail:
        return await sharing.shared_template(principal, template_id)


class AliasController(Controller):
    path = "/api/aliases"
    tags = ["aliases"]

    @get("/", guards=[allow(USER)], summary="List Aliases")
    async def list_aliases(
        self, sharing: NamedDependency[SharingService], principal: CurrentPrincipal
    ) -> AliasList:
        return AliasList(data=await sharing.aliases(principal))

    @get("/search", guards=[allow(USER)], summary="Search Aliases")
    async def search(
        self,
        sharing: NamedDependency[SharingService],
        principal: CurrentPrincipal,
        q: Annotated[str, QueryParameter(max_length=500)] = "",
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
        match: FromQuery[Match] = "any",
        include_steps: FromQuery[bool] = False,
        steps_limit: Annotated[int, QueryParameter(ge=0, le=50)] = 5,
    ) -> AliasSearchResponse:
        found = await sharing.search(
            principal,
            q,
            limit=limit,
            match=match,
            include_steps=include_steps,
            steps_limit=steps_limit,
        )
        return AliasSearchResponse(data=found)

    @get("/{alias:str}", guards=[allow(USER)], summary="Get Alias")
    async def get_alias(
        self,
        sharing: NamedDependency[SharingService],
        principal: CurrentPrincipal,
        alias: FromPath[str],
    ) -> AliasResponse:
        return await sharing.alias(principal, alias)

    @delete("/{alias:str}", guards=[allow(USER)], summary="Delete Alias")
    async def delete_alias(
        self,
        sharing: NamedDependency[SharingService],
        principal: CurrentPrincipal,
        alias: FromPath[str],
    ) -> None:
        """Beyond the contract: the alias's creator or an owner/admin of its organization."""
        await sharing.unshare(principal, alias)
