"""Dashboard pages for templates: the list, one template with its steps' cache state, a
build followed live, and starting a devbox from a template or a share link."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from devbox_service.auth.guards import PAGE, PUBLIC, CurrentPrincipal, allow, signed_in
from devbox_service.auth.models import Principal
from devbox_service.auth.web_sessions import SignInRequired
from devbox_service.devbox_templates.events import (
    TERMINAL,
    AwaitingInputEvent,
    BuildEvent,
    CacheEvent,
    CompletedEvent,
    OutputEvent,
    StepCompletedEvent,
    StepFailedEvent,
    StepStartedEvent,
    decode,
    kind,
)
from devbox_service.devbox_templates.schemas import (
    InstantDevboxRequest,
    TemplateCacheRequest,
    TemplateStepModel,
)
from devbox_service.devbox_templates.service import TemplateService
from devbox_service.errors import NotAuthenticated, NotFound
from devbox_service.sharing.service import SHARE_PREFIX, SharingService
from devbox_service.web.render import form_text, page


class StepProgress(msgspec.Struct, kw_only=True):
    index: int
    title: str
    type: str
    state: str = "pending"  # pending, cached, running, done, failed
    output: str = ""


class BuildProgress(msgspec.Struct, kw_only=True):
    """A build's events folded into what its page shows (the script does the same live)."""

    steps: list[StepProgress]
    message: str = ""
    finished: str | None = None  # the terminal event's type
    awaiting_secret: str | None = None
    devbox_id: str | None = None


def fold_events(steps: list[StepProgress], events: Iterable[BuildEvent]) -> BuildProgress:
    progress = BuildProgress(steps=steps)
    by_index = {step.index: step for step in steps}
    for event in events:
        step = by_index.get(getattr(event, "index", -1))
        match event:
            case CacheEvent() if step:
                step.state = "cached"
            case StepStartedEvent() if step:
                step.state = "running"
            case OutputEvent() if step:
                step.output += event.content
            case StepCompletedEvent() if step:
                step.state = "done"
                progress.awaiting_secret = None
            case AwaitingInputEvent():
                progress.awaiting_secret = event.secretName
            case StepFailedEvent() if step:
                step.state = "failed"
        if kind(event) in TERMINAL:
            progress.finished = kind(event)
            progress.awaiting_secret = None
            progress.devbox_id = event.instanceId if isinstance(event, CompletedEvent) else None
        if message := getattr(event, "message", None):
            progress.message = str(message)
    return progress


def build_view(steps: list[TemplateStepModel], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The build page's context from the run's stored events: what they fold into, how many
    the script skips when the stream replays them, and the event types that end a run (the
    script stops at those: one list, here)."""
    shown = [
        StepProgress(index=s.index, title=s.title or s.command or s.type, type=s.type)
        for s in steps
    ]
    readable = [event for event in map(decode, history) if event is not None]
    return {
        "progress": fold_events(shown, readable),
        "seen": len(history),
        "terminal": " ".join(sorted(TERMINAL)),
    }


@get("/templates", guards=[allow(PAGE)], include_in_schema=False)
async def template_list(
    request: Request[Any, Any, Any],
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
) -> Template:
    summaries = await templates.summaries(principal)
    return page(request, "templates.html", templates=summaries)


@get("/templates/{template_id:str}", guards=[allow(PAGE)], include_in_schema=False)
async def template_page(
    request: Request[Any, Any, Any],
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
) -> Template:
    template = await templates.get(principal, template_id)
    availability = await templates.availability(principal, template_id)
    consent = await templates.consent(principal, template_id)
    return page(
        request, "template.html", template=template, availability=availability, consent=consent
    )


@post("/templates/{template_id:str}/build", guards=[allow(PAGE)], include_in_schema=False)
async def build_template(
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
) -> Redirect:
    run_id = await templates.cache(principal, template_id, TemplateCacheRequest())
    return Redirect(f"/templates/{template_id}/builds/{run_id}", status_code=303)


@get(
    "/templates/{template_id:str}/builds/{run_id:str}",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def build_page(
    request: Request[Any, Any, Any],
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
    run_id: FromPath[str],
) -> Template:
    template = await templates.get(principal, template_id)
    history = await templates.history(principal, template_id, run_id)
    return page(
        request,
        "build.html",
        template=template,
        run_id=run_id,
        **build_view(template.steps, history),
    )


@get(
    "/templates/{template_id:str}/builds/{run_id:str}/events",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def build_events(
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
    run_id: FromPath[str],
) -> ServerSentEvent:
    """The run's events from the first (the page skips those it was rendered with)."""
    events = await templates.events(principal, template_id, run_id)

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        async for event in events:
            yield ServerSentEventMessage(event="build", data=json.dumps(event))

    return ServerSentEvent(messages())


@post(
    "/templates/{template_id:str}/builds/{run_id:str}/secrets",
    guards=[allow(PAGE)],
    include_in_schema=False,
)
async def answer_secret(
    request: Request[Any, Any, Any],
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
    run_id: FromPath[str],
) -> Redirect:
    form = await request.form()
    name = form_text(form, "name", 200)
    value = form_text(form, "value", 64 * 1024)
    await templates.answer_secrets(principal, template_id, run_id, {name: value})
    return Redirect(f"/templates/{template_id}/builds/{run_id}", status_code=303)


async def _start_request(request: Request[Any, Any, Any]) -> InstantDevboxRequest:
    """The start form: the secrets the visitor ticked (`secret`, one per box). None ticked
    sends no list: the author of the template gets its secrets, anyone else none."""
    form = await request.form()
    ticked = [str(v)[:128] for v in form.getall("secret", [])][:200]
    return InstantDevboxRequest(inject_secrets=ticked or None)


@post("/templates/{template_id:str}/start", guards=[allow(PAGE)], include_in_schema=False)
async def start_from_template(
    request: Request[Any, Any, Any],
    templates: NamedDependency[TemplateService],
    principal: CurrentPrincipal,
    template_id: FromPath[str],
) -> Redirect:
    body = await _start_request(request)
    devbox = await templates.instant_devbox(principal, template_id, body)
    return Redirect(f"/devboxes/{devbox.id}?done=started", status_code=303)


async def _maybe_signed_in(request: Request[Any, Any, Any]) -> Principal | None:
    try:
        return await signed_in(request)
    except NotAuthenticated:
        return None


@get(SHARE_PREFIX + "/{alias:str}", guards=[allow(PUBLIC)], include_in_schema=False)
async def share_page(
    request: Request[Any, Any, Any], sharing: NamedDependency[SharingService], alias: FromPath[str]
) -> Template:
    """What a short link opens: the template, and (signed in) a button to start from it. A
    public share shows to anyone; an org share only to the org's signed-in members. A visitor
    not signed in is sent to sign in and back here (for any alias not public, so the answer
    says nothing of which org aliases exist)."""
    principal = await _maybe_signed_in(request)
    try:
        shared = await sharing.page(principal, alias)
    except NotFound:
        if principal is None:
            raise SignInRequired(
                "sign in to open this share link: it is shared with its organization"
            ) from None
        raise
    return page(
        request,
        "share.html",
        alias=shared.alias,
        description=shared.description,
        template=shared.template,
        base_url=shared.base_url,
        consent=shared.consent,
        signed_in_user=principal,
    )


@post(SHARE_PREFIX + "/{alias:str}/start", guards=[allow(PAGE)], include_in_schema=False)
async def start_from_share(
    request: Request[Any, Any, Any],
    sharing: NamedDependency[SharingService],
    principal: CurrentPrincipal,
    alias: FromPath[str],
) -> Redirect:
    devbox = await sharing.start(principal, alias, await _start_request(request))
    return Redirect(f"/devboxes/{devbox.id}?done=started", status_code=303)
