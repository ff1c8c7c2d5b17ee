"""`POST /api/devboxes/{id}/http` and `DELETE .../http/{name}` (both answer the devbox), and
the preview URL `/preview/{devbox_id}/{name}/{path}` that serves an exposed service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from litestar import Controller, HttpMethod, Request, Router, delete, post, route
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response.base import ASGIResponse
from litestar.response.redirect import ASGIRedirectResponse
from litestar.response.streaming import ASGIStreamingResponse

from devbox_service.auth.guards import (
    PUBLIC,
    CurrentPrincipal,
    allow,
    on_devbox,
)
from devbox_service.auth.policy import Act
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.views import DevboxViews
from devbox_service.errors import LimitReached, Unreachable
from devbox_service.previews import proxy
from devbox_service.previews.models import HttpExposeRequest
from devbox_service.previews.origins import ORIGIN_KEY
from devbox_service.previews.proxy import PreviewProxy
from devbox_service.previews.service import HttpServiceRegistry

PROXIED_METHODS = [
    HttpMethod.GET,
    HttpMethod.HEAD,
    HttpMethod.POST,
    HttpMethod.PUT,
    HttpMethod.PATCH,
    HttpMethod.DELETE,
    HttpMethod.OPTIONS,
]


class HttpServiceController(Controller):
    path = "/api/devboxes/{devbox_id:str}/http"
    tags = ["devboxes"]

    @post(
        "/",
        guards=[allow(on_devbox(Act.EXPOSE))],
        status_code=200,
        summary="Expose HTTP Service",
        description="Expose a local port as an HTTP service; returns the updated devbox",
    )
    async def expose(
        self,
        previews: NamedDependency[HttpServiceRegistry],
        devbox_views: NamedDependency[DevboxViews],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[HttpExposeRequest],
    ) -> DevboxResponse:
        await previews.expose(
            principal, devbox_id, name=data.name, port=data.port, auth_mode=data.auth_mode
        )
        return await devbox_views.get(principal, devbox_id, Act.EXPOSE)

    @delete(
        "/{name:str}",
        guards=[allow(on_devbox(Act.EXPOSE))],
        status_code=200,
        summary="Unexpose HTTP Service",
        description="Remove an exposed HTTP service; returns the updated devbox",
    )
    async def unexpose(
        self,
        previews: NamedDependency[HttpServiceRegistry],
        devbox_views: NamedDependency[DevboxViews],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        name: FromPath[str],
    ) -> DevboxResponse:
        await previews.unexpose(principal, devbox_id, name)
        return await devbox_views.get(principal, devbox_id, Act.EXPOSE)


@route(
    [
        proxy.PREVIEW_PREFIX + "/{devbox_id:str}/{name:str}",
        proxy.PREVIEW_PREFIX + "/{devbox_id:str}/{name:str}/{path:path}",
    ],
    http_method=PROXIED_METHODS,
    guards=[allow(PUBLIC)],  # each service applies its own auth_mode (service.target)
    include_in_schema=False,
    status_code=200,
)
async def preview(
    request: Request[Any, Any, Any],
    previews: NamedDependency[HttpServiceRegistry],
    preview_proxy: NamedDependency[PreviewProxy],
    devbox_id: FromPath[str],
    name: FromPath[str],
) -> ASGIResponse:
    """Forward the request to the devbox's service (waking a paused devbox first) and stream
    the answer back; 502 when nothing answers on the guest port."""
    raw_headers: proxy.Headers = list(request.scope["headers"])
    prefix = f"{proxy.PREVIEW_PREFIX}/{devbox_id}/{name}"
    own_origin = bool(request.scope.get("state", {}).get(ORIGIN_KEY))
    public_prefix = "" if own_origin else prefix  # what the browser sees before the path
    # raw_path keeps the client's percent-encoding; httpx's ASGI bridge leaves the query in it
    path = (request.scope.get("raw_path") or b"").decode("latin-1").partition("?")[0]
    if path != prefix and not path.startswith(prefix + "/"):  # an encoded id or name
        path = quote(request.scope["path"])
    rest = path[len(prefix) :]
    query = request.scope.get("query_string", b"").decode("latin-1")
    suffix = f"?{query}" if query else ""
    if not own_origin:  # never on the dashboard's origin: the page would be the dashboard's
        url = previews.own_origin(devbox_id, name).rstrip("/") + (rest or "/") + suffix
        return ASGIRedirectResponse(path=url, status_code=307)  # method and body kept
    if not rest:  # relative links in the page must resolve under the prefix
        return ASGIRedirectResponse(path=f"{public_prefix}/{suffix}")
    target = await previews.target(devbox_id, name, proxy.bearer_of(raw_headers))
    headers = proxy.request_headers(
        raw_headers,
        forwarded={
            "x-forwarded-for": request.client.host if request.client else "",
            "x-forwarded-host": request.headers.get("host", ""),
            "x-forwarded-proto": request.url.scheme,
            "x-forwarded-prefix": public_prefix,
        },
    )
    url = f"http://{target.upstream.authority}{rest}{suffix}"
    try:
        upstream, close = await preview_proxy.send(
            devbox_id, request.method, url, headers, request.stream()
        )
    except proxy.PreviewBusy as exc:
        raise LimitReached(
            f"{exc}: wait for some to finish (the limit keeps one devbox's streams from "
            "starving everyone's previews)",
            limit="preview_requests_per_devbox",
        ) from exc
    except proxy.UpstreamUnreachable as exc:
        raise Unreachable(
            f"nothing answered HTTP on port {target.service.port} of devbox {devbox_id} "
            f"(service {name!r}): {exc}"
        ) from exc

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:  # also when the client goes away mid-stream
            await close()

    return ASGIStreamingResponse(
        iterator=relay(),
        status_code=upstream.status_code,
        headers=proxy.response_headers(upstream, public_prefix, target.upstream),  # type: ignore[arg-type]
        media_type=upstream.headers.get("content-type", "application/octet-stream"),
        is_head_response=request.method == "HEAD",
        background=BackgroundTask(close),
    )


def preview_router(max_body_bytes: int) -> Router:
    """Mounted by `create_app`: request bodies up to the upload limit pass through."""
    return Router(path="/", route_handlers=[preview], request_max_body_size=max_body_bytes)
