"""Dashboard pages for devboxes: the live list, one devbox, its actions and its terminals.
Every action calls the same service method as the API route of the same name."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from devbox_service.auth.guards import PAGE, CurrentPrincipal, allow
from devbox_service.errors import InvalidInput, NotFound
from devbox_service.tmux.keys import key_name
from devbox_service.tmux.models import MAX_KEYS_BYTES, TmuxSendKeysRequest
from devbox_service.tmux.service import TmuxService
from devbox_service.web.dashboard import Dashboard, PageAction
from devbox_service.web.render import form_text, page, render_row, render_terminal

NOTICES = {
    "paused": "Paused.",
    "resumed": "Resumed.",
    "rebooted": "Rebooted.",
    "saved": "Saved a snapshot.",
    "branched": "Branched: the copies are listed below.",
    "deleted": "Deleted.",
    "revoked": "Agent token revoked.",
    "started": "Devbox started.",
}
"""Fixed texts a redirect may name (`?done=`), so no page echoes text from a link."""


PANE_NUMBER = re.compile(r"[0-9]{1,9}")


def _pane(number: str) -> str:
    """The pane a terminal view's URL names: by its number only (`%N` without the `%`),
    never a tmux target, so the page routes reach exactly the panes the page listed."""
    if not PANE_NUMBER.fullmatch(number):
        raise NotFound.of("tmux pane", number[:20])
    return f"%{number}"


def _notice(request: Request[Any, Any, Any]) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


@get("/devboxes", guards=[allow(PAGE)], include_in_schema=False)
async def devbox_list(
    request: Request[Any, Any, Any],
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
) -> Template:
    rows = await dashboard.rows(principal)
    return page(request, "devboxes.html", rows=rows, notice=_notice(request))


@get("/devboxes/events", guards=[allow(PAGE)], include_in_schema=False)
async def devbox_list_events(
    request: Request[Any, Any, Any],
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
) -> ServerSentEvent:
    """`row` events carry a rendered table row; `gone` events the id of a deleted devbox."""

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        async for batch in dashboard.watch(principal):
            for change in batch:
                if change.row is None:
                    yield ServerSentEventMessage(event="gone", data=change.id)
                else:
                    html = render_row(request, principal, change.row)
                    data = json.dumps({"id": change.id, "status": change.row.status, "html": html})
                    yield ServerSentEventMessage(event="row", data=data)

    return ServerSentEvent(events())


@get("/devboxes/{devbox_id:str}", guards=[allow(PAGE)], include_in_schema=False)
async def devbox_page(
    request: Request[Any, Any, Any],
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
) -> Template:
    details = await dashboard.devbox(principal, devbox_id)
    return page(request, "devbox.html", d=details, notice=_notice(request))


@get("/devboxes/{devbox_id:str}/terminals", guards=[allow(PAGE)], include_in_schema=False)
async def devbox_terminals(
    request: Request[Any, Any, Any],
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
) -> ServerSentEvent:
    """`terminals` events: the devbox page's panes (each rendered), status and note, whenever
    they change, so a session started after the page opened shows without a reload."""
    may_type, changes = await dashboard.watch_terminals(principal, devbox_id)  # 404 first

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        async for terminals in changes:
            panes = [
                {"id": p.id, "html": render_terminal(request, devbox_id, p, may_type=may_type)}
                for p in terminals.panes
            ]
            data = {"status": terminals.status, "note": terminals.note, "panes": panes}
            yield ServerSentEventMessage(event="terminals", data=json.dumps(data))

    return ServerSentEvent(events())


NOTICE_OF = {
    PageAction.PAUSE: "paused",
    PageAction.RESUME: "resumed",
    PageAction.REBOOT: "rebooted",
    PageAction.SAVE: "saved",
    PageAction.BRANCH: "branched",  # shown on the list, where the copies are
    PageAction.DELETE: "deleted",  # shown on the list
}


@post(
    "/devboxes/{devbox_id:str}/actions/{action:str}", guards=[allow(PAGE)], include_in_schema=False
)
async def devbox_action(
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
    action: FromPath[str],
) -> Redirect:
    try:
        chosen = PageAction(action)
    except ValueError:
        names = ", ".join(PageAction)
        raise InvalidInput(f"unknown action {action!r}: use one of {names}") from None
    await dashboard.act(principal, devbox_id, chosen)
    if chosen in (PageAction.BRANCH, PageAction.DELETE):
        return Redirect(f"/devboxes?done={NOTICE_OF[chosen]}", status_code=303)
    return Redirect(f"/devboxes/{devbox_id}?done={NOTICE_OF[chosen]}", status_code=303)


@get("/devboxes/{devbox_id:str}/delete", guards=[allow(PAGE)], include_in_schema=False)
async def confirm_delete(
    request: Request[Any, Any, Any],
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
) -> Template:
    record = await dashboard.record(principal, devbox_id)
    return page(request, "confirm_delete.html", devbox=record)


@post(
    "/devboxes/{devbox_id:str}/agent-tokens/{token_id:str}/revoke",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def revoke_agent_token(
    dashboard: NamedDependency[Dashboard],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
    token_id: FromPath[str],
) -> Redirect:
    await dashboard.revoke_agent_token(principal, devbox_id, token_id)
    return Redirect(f"/devboxes/{devbox_id}?done=revoked", status_code=303)


@get(
    "/devboxes/{devbox_id:str}/panes/{pane_id:str}/stream",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def pane_stream(
    tmux: NamedDependency[TmuxService],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
    pane_id: FromPath[str],
) -> ServerSentEvent:
    """The pane's screen whenever it changes (the terminal view redraws from each)."""
    screens = await tmux.stream(
        principal,
        devbox_id,
        _pane(pane_id),
        socket=None,
        debounce_ms=15,
        max_events=None,
        timeout_ms=None,
        ansi=True,
    )

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        async for screen in screens:
            yield ServerSentEventMessage(
                event="screen", data=msgspec.json.encode(screen).decode(), id=str(screen.seq)
            )

    return ServerSentEvent(events())


class TypedKeys(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the terminal view sends: literal text, or one tmux key name."""

    text: str = ""
    key: str | None = None


@post(
    "/devboxes/{devbox_id:str}/panes/{pane_id:str}/keys",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def pane_keys(
    request: Request[Any, Any, Any],
    tmux: NamedDependency[TmuxService],
    principal: CurrentPrincipal,
    devbox_id: FromPath[str],
    pane_id: FromPath[str],
) -> Response[None]:
    """Typing from the terminal view (JSON from its script, or the no-script form)."""
    pane_id = _pane(pane_id)
    if request.headers.get("content-type", "").startswith("application/json"):
        typed = msgspec.json.decode(await request.body(), type=TypedKeys)
        form_post = False
    else:
        form = await request.form()
        typed = TypedKeys(text=form_text(form, "text", MAX_KEYS_BYTES), key="Enter")
        form_post = True
    if len(typed.text.encode()) > MAX_KEYS_BYTES:
        raise InvalidInput(f"send at most {MAX_KEYS_BYTES} bytes at once")
    if typed.key is not None and key_name(typed.key) is None:
        raise InvalidInput(f"{typed.key!r} is not a tmux key name (Enter, BSpace, Up, C-c...)")
    requests = [TmuxSendKeysRequest(pane_id=pane_id, keys=typed.text, literal=True)]
    requests = requests if typed.text else []
    if typed.key is not None:
        requests.append(TmuxSendKeysRequest(pane_id=pane_id, sequence=[typed.key]))
    for keys in requests:
        await tmux.send_keys(principal, devbox_id, keys)
    if form_post:
        return Redirect(f"/devboxes/{devbox_id}", status_code=303)
    return Response(None, status_code=204)
