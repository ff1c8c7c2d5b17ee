"""`/api/devboxes`: translate HTTP to one DevboxService call each."""

from __future__ import annotations

from litestar import Controller, get

from devbox_service.auth.guards import USER, CurrentPrincipal, allow
from devbox_service.devboxes.models import DevboxListResponse
from devbox_service.services import AppServices


class DevboxController(Controller):
    path = "/api/devboxes"
    tags = ["devboxes"]

    @get("/", guards=[allow(USER)], summary="List Devboxes")
    async def list_devboxes(
        self, services: AppServices, principal: CurrentPrincipal
    ) -> DevboxListResponse:
        return DevboxListResponse(data=await services.devboxes.list_summaries(principal))
