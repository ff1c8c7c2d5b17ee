"""Instant devboxes: a devbox started from a template's final snapshot, with the template's
HTTP services exposed and the caller's saved secrets set once it is up.

Which secrets: the template's processes run as root in that devbox and read whatever is
written there, and they are the template author's. So a user starting their own template
gets every secret it exports (saved ones); anyone else (an org-mate included: the author is a
different user) gets only those they name in the request (`inject_secrets`), none by default.

It stands alone because it is the one part of templates that reaches into devboxes, previews
and secrets; reading and writing templates needs none of them. Who may see the template is
the caller's check (`TemplateService`), done before anything here runs.
"""

from __future__ import annotations

import re

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, permits
from devbox_service.devbox_templates.builds import inject_secrets
from devbox_service.devbox_templates.models import TemplateRecord, TemplateStatus
from devbox_service.devbox_templates.schemas import AvailabilityReason, InstantDevboxRequest
from devbox_service.devbox_templates.spec import (
    CommandStep,
    ExportSecretStep,
    ExposeHttpServiceStep,
    TemplateSpec,
    TmuxSessionStep,
    step_title,
    step_type,
)
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.service import DevboxService
from devbox_service.errors import Conflict, InvalidInput, NotFound
from devbox_service.previews.models import HttpServiceAuthMode
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.secrets.service import SecretService

SHOWN_COMMAND = 400  # characters of a command the consent list shows


class StepUse(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    type: str
    title: str
    command: str | None


class SecretUse(msgspec.Struct, frozen=True, kw_only=True):
    """One secret a template exports, for the consent form: the steps that use it by name
    (its own step's command, later commands naming `$NAME`), and whether it is optional."""

    name: str
    optional: bool
    steps: list[StepUse]


class SecretConsent(msgspec.Struct, frozen=True, kw_only=True):
    """What a starter is asked before their secrets go into a devbox of someone else's
    template: each secret and the steps that use it, and the template's long-lived processes
    (tmux sessions), which run as root there and can read every secret written."""

    secrets: list[SecretUse]
    sessions: list[StepUse]


def _use(index: int, step: CommandStep | ExportSecretStep | TmuxSessionStep) -> StepUse:
    command = step.run[:SHOWN_COMMAND] if step.run else None
    return StepUse(index=index, type=step_type(step), title=step_title(step), command=command)


def secret_consent(spec: TemplateSpec) -> SecretConsent:
    uses: dict[str, SecretUse] = {}
    for index, step in enumerate(spec.steps):
        if isinstance(step, ExportSecretStep) and step.name not in uses:
            named = re.compile(r"\$\{?" + re.escape(step.name) + r"\b")
            steps = [_use(index, step)] + [
                _use(later, other)
                for later, other in enumerate(spec.steps)
                if later > index
                and isinstance(other, CommandStep | ExportSecretStep | TmuxSessionStep)
                and other.run
                and named.search(other.run)
            ]
            uses[step.name] = SecretUse(name=step.name, optional=step.optional, steps=steps)
    sessions = [
        _use(index, step)
        for index, step in enumerate(spec.steps)
        if isinstance(step, TmuxSessionStep)
    ]
    return SecretConsent(secrets=list(uses.values()), sessions=sessions)


def chosen_secrets(
    principal: Principal, template: TemplateRecord, spec: TemplateSpec, named: list[str] | None
) -> list[str]:
    """The exported secrets the caller's saved values are written for: those `named`; without
    a list, all of them for the template's author and none for anyone else. Raises
    InvalidInput for a name the template does not export."""
    exported = [s.name for s in spec.steps if isinstance(s, ExportSecretStep)]
    if named is None:
        return exported if permits(principal, Act.TEMPLATE_SECRETS, template) else []
    unknown = sorted(set(named) - set(exported))
    if unknown:
        offered = ", ".join(exported) or "none"
        raise InvalidInput(
            f"the template exports no secret named {', '.join(unknown)} (it exports: {offered})",
            field="inject_secrets",
        )
    return [name for name in dict.fromkeys(exported) if name in named]


class InstantDevboxes:
    """Whether a template can start a devbox now, and starting one."""

    def __init__(
        self,
        *,
        devboxes: DevboxService,
        checkpoints: CheckpointService,
        guests: GuestAccess,
        secrets: SecretService,
        previews: HttpServiceRegistry,
    ) -> None:
        self._devboxes = devboxes
        self._checkpoints = checkpoints
        self._guests = guests
        self._secrets = secrets
        self._previews = previews

    async def unavailable(
        self,
        principal: Principal,
        template: TemplateRecord,
        spec: TemplateSpec,
        chosen: list[str] | None = None,
    ) -> AvailabilityReason | None:
        """Why the caller cannot start a devbox from the template now (None: they can): not
        built, or a required secret among those chosen (by default: `chosen_secrets`) is not
        saved."""
        if template.status is not TemplateStatus.READY or not template.final_snapshot_id:
            return "not_ready"
        if chosen is None:
            chosen = chosen_secrets(principal, template, spec, None)
        if await self._missing_secrets(principal, spec, chosen):
            return "requires_build"
        return None

    async def start(
        self,
        principal: Principal,
        template: TemplateRecord,
        spec: TemplateSpec,
        request: InstantDevboxRequest,
    ) -> DevboxResponse:
        """A devbox from the template's final snapshot: its files, processes and tmux
        sessions; its HTTP services exposed and the chosen secrets set once it is up.
        Raises Conflict when `unavailable` names a reason, InvalidInput (a secret name)."""
        chosen = chosen_secrets(principal, template, spec, request.inject_secrets)
        reason = await self.unavailable(principal, template, spec, chosen)
        if reason is not None or not template.final_snapshot_id:
            raise Conflict(
                f"template {template.id} cannot start a devbox now: {reason}", state=reason
            )
        snapshot = await self._checkpoints.snapshot_info(template.final_snapshot_id)
        values = await self._saved_secrets(principal, chosen)

        async def set_up(devbox_id: str) -> None:
            for step in spec.steps:
                if isinstance(step, ExposeHttpServiceStep):
                    mode = HttpServiceAuthMode(step.auth_mode) if step.auth_mode else None
                    await self._previews.expose(
                        principal, devbox_id, name=step.name, port=step.port, auth_mode=mode
                    )
            await inject_secrets(self._guests, principal, devbox_id, values)

        metadata = {"template_id": template.id, **(request.metadata or {})}
        started = await self._devboxes.start_from(
            principal,
            snapshot,
            name=request.name or template.name,
            metadata=metadata,
            after_ready=set_up,
        )
        if request.handoff_ttl_seconds is not None:
            return await self._devboxes.set_ttl(
                principal, started.id, request.handoff_ttl_seconds, request.handoff_ttl_action
            )
        return started

    async def _saved_secrets(self, principal: Principal, names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in names:
            try:
                found[name] = (await self._secrets.read(principal, name)).value
            except NotFound:
                continue
        return found

    async def _missing_secrets(
        self, principal: Principal, spec: TemplateSpec, chosen: list[str]
    ) -> list[str]:
        saved = await self._saved_secrets(principal, chosen)
        return [
            s.name
            for s in spec.steps
            if isinstance(s, ExportSecretStep)
            and not s.optional
            and s.name in chosen
            and s.name not in saved
        ]
