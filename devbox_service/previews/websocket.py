"""WebSockets of exposed services (dev servers' live reload, say): the same preview URLs and
auth rules as plain HTTP, each socket relayed frame by frame to the guest port and holding one
of the devbox's preview slots while open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

import websockets
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath
from websockets.asyncio.client import ClientConnection, connect

from devbox_service.auth.guards import PUBLIC, allow
from devbox_service.errors import NotFound, Unreachable
from devbox_service.previews import proxy
from devbox_service.previews.origins import ORIGIN_KEY
from devbox_service.previews.proxy import PreviewProxy
from devbox_service.previews.service import HttpServiceRegistry

HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@websocket(
    [
        proxy.PREVIEW_PREFIX + "/{devbox_id:str}/{name:str}",
        proxy.PREVIEW_PREFIX + "/{devbox_id:str}/{name:str}/{path:path}",
    ],
    guards=[allow(PUBLIC)],  # each service applies its own auth_mode (service.target)
    include_in_schema=False,
)
async def preview_socket(
    socket: WebSocket[Any, Any, Any],
    previews: NamedDependency[HttpServiceRegistry],
    preview_proxy: NamedDependency[PreviewProxy],
    devbox_id: FromPath[str],
    name: FromPath[str],
) -> None:
    raw_headers: proxy.Headers = list(socket.scope["headers"])
    if not socket.scope.get("state", {}).get(ORIGIN_KEY):  # never on the dashboard's origin
        own = previews.own_origin(devbox_id, name)
        raise NotFound(f"open this service's WebSockets on its own origin, {own}")
    target = await previews.target(devbox_id, name, proxy.bearer_of(raw_headers))
    prefix = f"{proxy.PREVIEW_PREFIX}/{devbox_id}/{name}"
    path = quote(socket.scope["path"])[len(prefix) :] or "/"
    query = socket.scope.get("query_string", b"").decode("latin-1")
    url = f"ws://{target.upstream.authority}{path}" + (f"?{query}" if query else "")
    forwarded = proxy.request_headers(
        raw_headers,
        forwarded={"x-forwarded-prefix": ""},
    )
    headers = [
        (n.decode("latin-1"), v.decode("latin-1"))
        for n, v in forwarded
        if n.decode("latin-1").lower() not in HANDSHAKE_HEADERS
    ]
    wanted = [
        p.strip() for p in socket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()
    ]
    async with preview_proxy.slot(devbox_id):
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                subprotocols=wanted or None,  # type: ignore[arg-type]
                open_timeout=10,
                max_size=MAX_MESSAGE_BYTES,
                proxy=None,
            )
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            raise Unreachable(
                f"no WebSocket answered on port {target.service.port} of devbox {devbox_id}: {exc}"
            ) from exc
        async with upstream:
            await socket.accept(subprotocols=upstream.subprotocol)
            await _relay(socket, upstream)


async def _relay(socket: WebSocket[Any, Any, Any], upstream: ClientConnection) -> None:
    """Frames both ways until either side closes; the other side is then closed too."""

    async def to_guest() -> None:
        with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed):
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if isinstance(data, bytes):
                    await upstream.send(data)
                else:
                    await upstream.send(str(message.get("text") or ""))

    async def to_client() -> None:
        with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed):
            async for data in upstream:
                if isinstance(data, bytes):
                    await socket.send_bytes(data)
                else:
                    await socket.send_text(data)

    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await socket.close()
