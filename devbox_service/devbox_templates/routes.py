"""`/api/templates`: each handler makes one service call. The build event stream is an SSE
stream (keep-alives are SSE comments, `event_streams`); a client that does not accept
`text/event-stream` gets the run's events so far as a JSON list."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEventMessage
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from devbox_service.auth.guards import USER, CurrentPrincipal, allow
from devbox_service.devbox_templates.schemas import (
    InstantDevboxAvailability,
    InstantDevboxRequest,
    TemplateCacheRequest,
    TemplateCacheStartResponse,
    TemplateCreateRequest,
    TemplateDetail,
    TemplateListResponse,
    TemplateUpdateRequest,
)
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.event_streams import event_stream
from devbox_service.request_bodies import optional_body
from devbox_service.services import AppServices

T = TypeVar("T")


class TemplateController(Controller):
    path = "/api/templates"
    tags = ["templates"]

    @get("/", guards=[allow(USER)], summary="List Templates")
    async def list_templates(
        self, services: AppServices, principal: CurrentPrincipal
    ) -> TemplateListResponse:
        return TemplateListResponse(data=await services.templates.summaries(principal))

    @post("/", guards=[allow(USER)], status_code=201, summary="Create Template")
    async def create(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        data: JSONBody[TemplateCreateRequest],
    ) -> TemplateDetail:
        return await services.templates.create(principal, data)

    @get("/by-hash/{content_hash:str}", guards=[allow(USER)], summary="Get Template By Hash")
    async def by_hash(
        self, services: AppServices, principal: CurrentPrincipal, content_hash: FromPath[str]
    ) -> TemplateDetail:
        return await services.templates.by_hash(principal, content_hash)

    @get("/{template_id:str}", guards=[allow(USER)], summary="Get Template")
    async def get_template(
        self, services: AppServices, principal: CurrentPrincipal, template_id: FromPath[str]
    ) -> TemplateDetail:
        return await services.templates.get(principal, template_id)

    @put("/{template_id:str}", guards=[allow(USER)], summary="Update Template")
    async def update(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        data: JSONBody[TemplateUpdateRequest],
    ) -> TemplateDetail:
        return await services.templates.update(principal, template_id, data)

    @delete("/{template_id:str}", guards=[allow(USER)], summary="Delete Template")
    async def delete_template(
        self, services: AppServices, principal: CurrentPrincipal, template_id: FromPath[str]
    ) -> None:
        await services.templates.delete(principal, template_id)

    @post(
        "/{template_id:str}/cache", guards=[allow(USER)], status_code=202, summary="Cache Template"
    )
    async def cache(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> TemplateCacheStartResponse:
        body = await optional_body(request, TemplateCacheRequest)
        run_id = await services.templates.cache(principal, template_id, body)
        return TemplateCacheStartResponse(run_id=run_id)

    @delete("/{template_id:str}/cache", guards=[allow(USER)], summary="Cancel Template Cache")
    async def cancel(
        self, services: AppServices, principal: CurrentPrincipal, template_id: FromPath[str]
    ) -> None:
        await services.templates.cancel(principal, template_id)

    @post(
        "/{template_id:str}/cache/{run_id:str}/secrets",
        guards=[allow(USER)],
        status_code=200,
        summary="Submit Template Secrets",
    )
    async def secrets(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        run_id: FromPath[str],
        data: JSONBody[dict[str, str]],
    ) -> dict[str, str]:
        await services.templates.answer_secrets(principal, template_id, run_id, data)
        return {"status": "accepted", "run_id": run_id}

    @get("/{template_id:str}/events", guards=[allow(USER)], summary="Stream Template Events")
    async def events(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
        run_id: FromQuery[str | None] = None,
        force: FromQuery[bool] = False,  # accepted for the CLI; a run is never restarted here
    ) -> ASGIApp:
        if "text/event-stream" not in request.headers.get("accept", ""):
            history = await services.templates.history(principal, template_id, run_id)
            return ASGIResponse(body=json.dumps(history).encode(), media_type="application/json")
        events = await services.templates.events(principal, template_id, run_id)
        return event_stream(request, _sse(events))

    @get(
        "/{template_id:str}/instant-devbox/availability",
        guards=[allow(USER)],
        summary="Instant Devbox Availability",
    )
    async def availability(
        self, services: AppServices, principal: CurrentPrincipal, template_id: FromPath[str]
    ) -> InstantDevboxAvailability:
        return await services.templates.availability(principal, template_id)

    @post(
        "/{template_id:str}/instant-devbox",
        guards=[allow(USER)],
        status_code=200,
        summary="Start Instant Devbox",
    )
    async def instant_devbox(
        self,
        services: AppServices,
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> DevboxResponse:
        body = await optional_body(request, InstantDevboxRequest)
        return await services.templates.instant_devbox(principal, template_id, body)


async def _sse(
    events: AsyncIterator[dict[str, Any]],
) -> AsyncGenerator[ServerSentEventMessage, None]:
    async for event in events:
        yield ServerSentEventMessage(data=json.dumps(event))
