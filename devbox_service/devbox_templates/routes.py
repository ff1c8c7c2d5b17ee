"""`/api/templates`: each handler makes one service call. The build event stream is an SSE
stream (keep-alives are SSE comments, `event_streams`); a client that does not accept
`text/event-stream` gets the run's events so far as a JSON list."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
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
from devbox_service.devbox_templates.service import TemplateService
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.event_streams import event_stream
from devbox_service.request_bodies import optional_body

T = TypeVar("T")


class TemplateController(Controller):
    path = "/api/templates"
    tags = ["templates"]

    @get("/", guards=[allow(USER)], summary="List Templates")
    async def list_templates(
        self, templates: NamedDependency[TemplateService], principal: CurrentPrincipal
    ) -> TemplateListResponse:
        return TemplateListResponse(data=await templates.summaries(principal))

    @post("/", guards=[allow(USER)], status_code=201, summary="Create Template")
    async def create(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        data: JSONBody[TemplateCreateRequest],
    ) -> TemplateDetail:
        return await templates.create(principal, data)

    @get("/by-hash/{content_hash:str}", guards=[allow(USER)], summary="Get Template By Hash")
    async def by_hash(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        content_hash: FromPath[str],
    ) -> TemplateDetail:
        return await templates.by_hash(principal, content_hash)

    @get("/{template_id:str}", guards=[allow(USER)], summary="Get Template")
    async def get_template(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
    ) -> TemplateDetail:
        return await templates.get(principal, template_id)

    @put("/{template_id:str}", guards=[allow(USER)], summary="Update Template")
    async def update(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        data: JSONBody[TemplateUpdateRequest],
    ) -> TemplateDetail:
        return await templates.update(principal, template_id, data)

    @delete("/{template_id:str}", guards=[allow(USER)], summary="Delete Template")
    async def delete_template(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
    ) -> None:
        await templates.delete(principal, template_id)

    @post(
        "/{template_id:str}/cache", guards=[allow(USER)], status_code=202, summary="Cache Template"
    )
    async def cache(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> TemplateCacheStartResponse:
        body = await optional_body(request, TemplateCacheRequest)
        run_id = await templates.cache(principal, template_id, body)
        return TemplateCacheStartResponse(run_id=run_id)

    @delete("/{template_id:str}/cache", guards=[allow(USER)], summary="Cancel Template Cache")
    async def cancel(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
    ) -> None:
        await templates.cancel(principal, template_id)

    @post(
        "/{template_id:str}/cache/{run_id:str}/secrets",
        guards=[allow(USER)],
        status_code=200,
        summary="Submit Template Secrets",
    )
    async def secrets(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        run_id: FromPath[str],
        data: JSONBody[dict[str, str]],
    ) -> dict[str, str]:
        await templates.answer_secrets(principal, template_id, run_id, data)
        return {"status": "accepted", "run_id": run_id}

    @get("/{template_id:str}/events", guards=[allow(USER)], summary="Stream Template Events")
    async def events(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
        run_id: FromQuery[str | None] = None,
        force: FromQuery[bool] = False,  # accepted for the CLI; a run is never restarted here
    ) -> ASGIApp:
        if "text/event-stream" not in request.headers.get("accept", ""):
            history = await templates.history(principal, template_id, run_id)
            return ASGIResponse(body=json.dumps(history).encode(), media_type="application/json")
        events = await templates.events(principal, template_id, run_id)
        return event_stream(request, _sse(events))

    @get(
        "/{template_id:str}/instant-devbox/availability",
        guards=[allow(USER)],
        summary="Instant Devbox Availability",
    )
    async def availability(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
    ) -> InstantDevboxAvailability:
        return await templates.availability(principal, template_id)

    @post(
        "/{template_id:str}/instant-devbox",
        guards=[allow(USER)],
        status_code=200,
        summary="Start Instant Devbox",
    )
    async def instant_devbox(
        self,
        templates: NamedDependency[TemplateService],
        principal: CurrentPrincipal,
        template_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> DevboxResponse:
        body = await optional_body(request, InstantDevboxRequest)
        return await templates.instant_devbox(principal, template_id, body)


async def _sse(
    events: AsyncIterator[dict[str, Any]],
) -> AsyncGenerator[ServerSentEventMessage, None]:
    async for event in events:
        yield ServerSentEventMessage(data=json.dumps(event))
