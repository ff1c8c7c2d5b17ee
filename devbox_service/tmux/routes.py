"""`/api/devboxes/{devbox_id}/tmux/...`: tmux automation routes; each calls one service method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from devbox_service.auth.guards import CurrentPrincipal, allow, on_devbox
from devbox_service.auth.policy import Act
from devbox_service.tmux.models import (
    TmuxDebugInfoResponse,
    TmuxInstallResponse,
    TmuxKillResponse,
    TmuxNewSessionRequest,
    TmuxNewSessionResponse,
    TmuxPaneEvent,
    TmuxRenameRequest,
    TmuxSendKeysRequest,
    TmuxSendKeysResponse,
    TmuxSessionsList,
    TmuxSnapshotResponse,
    TmuxWaitRequest,
    TmuxWaitResponse,
)
from devbox_service.tmux.service import TmuxService

SocketQuery = Annotated[
    str | None,
    QueryParameter(
        name="socket",
        pattern=r"^[A-Za-z0-9_./@+-]+$",
        description="tmux socket name/path if non-default",
    ),
]


async def _sse(events: AsyncIterator[TmuxPaneEvent]) -> AsyncIterator[ServerSentEventMessage]:
    async for event in events:
        yield ServerSentEventMessage(
            data=msgspec.json.encode(event).decode(), event="screen", id=str(event.seq)
        )


class TmuxController(Controller):
    path = "/api/devboxes/{devbox_id:str}/tmux"
    tags = ["Tmux"]

    @post("/install", guards=[allow(on_devbox(Act.TYPE))], status_code=200, summary="Tmux Install")
    async def install(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> TmuxInstallResponse:
        return await tmux.install(principal, devbox_id)

    @get("/sessions", guards=[allow(on_devbox(Act.WATCH))], summary="List Tmux Sessions")
    async def list_sessions(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        tmux_socket: SocketQuery = None,
    ) -> Response[TmuxSessionsList]:
        installed, sessions = await tmux.list_sessions(principal, devbox_id, tmux_socket)
        return Response(sessions, headers={"x-tmux-installed": "true" if installed else "false"})

    @post(
        "/sessions",
        guards=[allow(on_devbox(Act.TYPE))],
        status_code=200,
        summary="Tmux New Session",
    )
    async def new_session(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[TmuxNewSessionRequest],
    ) -> TmuxNewSessionResponse:
        return await tmux.new_session(principal, devbox_id, data.name, data.socket)

    @patch(
        "/sessions/{target:str}/rename",
        guards=[allow(on_devbox(Act.TYPE))],
        summary="Tmux Rename Session",
    )
    async def rename_session(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        target: FromPath[str],
        data: JSONBody[TmuxRenameRequest],
    ) -> TmuxNewSessionResponse:
        return await tmux.rename_session(principal, devbox_id, target, data.new_name, data.socket)

    @delete(
        "/sessions/{target:str}",
        guards=[allow(on_devbox(Act.TYPE))],
        status_code=200,
        summary="Tmux Kill Session",
    )
    async def kill_session(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        target: FromPath[str],
        tmux_socket: SocketQuery = None,
    ) -> TmuxKillResponse:
        return await tmux.kill_session(principal, devbox_id, target, tmux_socket)

    @post(
        "/send-keys", guards=[allow(on_devbox(Act.TYPE))], status_code=200, summary="Tmux Send Keys"
    )
    async def send_keys(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[TmuxSendKeysRequest],
    ) -> TmuxSendKeysResponse:
        return await tmux.send_keys(principal, devbox_id, data)

    @get(
        "/panes/{pane_id:str}/snapshot",
        guards=[allow(on_devbox(Act.WATCH))],
        summary="Tmux Snapshot",
    )
    async def snapshot(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        pane_id: FromPath[str],
        lines: Annotated[int, QueryParameter(ge=1, le=2000)] = 200,
        ansi: FromQuery[bool] = False,
        tmux_socket: SocketQuery = None,
    ) -> TmuxSnapshotResponse:
        return await tmux.snapshot(
            principal, devbox_id, pane_id, lines=lines, ansi=ansi, socket=tmux_socket
        )

    @post(
        "/panes/{pane_id:str}/wait",
        guards=[allow(on_devbox(Act.WATCH))],
        status_code=200,
        summary="Tmux Wait",
    )
    async def wait(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        pane_id: FromPath[str],
        data: JSONBody[TmuxWaitRequest],
    ) -> TmuxWaitResponse:
        return await tmux.wait(principal, devbox_id, pane_id, data)

    @get(
        "/panes/{pane_id:str}/stream",
        guards=[allow(on_devbox(Act.WATCH))],
        summary="Tmux Stream Pane",
    )
    async def stream(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        pane_id: FromPath[str],
        tmux_socket: SocketQuery = None,
        debounce_ms: Annotated[int, QueryParameter(ge=0, le=5000)] = 30,
        max_events: Annotated[int | None, QueryParameter(ge=1)] = None,
        timeout_ms: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> ServerSentEvent:
        events = await tmux.stream(
            principal,
            devbox_id,
            pane_id,
            socket=tmux_socket,
            debounce_ms=debounce_ms,
            max_events=max_events,
            timeout_ms=timeout_ms,
        )
        return ServerSentEvent(_sse(events))

    @get("/debug", guards=[allow(on_devbox(Act.WATCH))], summary="Tmux Debug Info")
    async def debug(
        self,
        tmux: NamedDependency[TmuxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> TmuxDebugInfoResponse:
        return await tmux.debug(principal, devbox_id)


route_handlers: list[type | HTTPRouteHandler] = [TmuxController]
