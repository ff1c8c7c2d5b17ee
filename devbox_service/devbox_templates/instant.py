"""Instant devboxes: a devbox started from a template's final snapshot, with the template's
HTTP services exposed and the caller's saved secrets set once it is up.

It stands alone because it is the one part of templates that reaches into devboxes, previews
and secrets; reading and writing templates needs none of them. Who may see the template is
the caller's check (`TemplateService`), done before anything here runs.
"""

from __future__ import annotations

from devbox_service.auth.models import Principal
from devbox_service.devbox_templates.builds import inject_secrets
from devbox_service.devbox_templates.models import TemplateRecord, TemplateStatus
from devbox_service.devbox_templates.schemas import AvailabilityReason, InstantDevboxRequest
from devbox_service.devbox_templates.spec import (
    ExportSecretStep,
    ExposeHttpServiceStep,
    TemplateSpec,
    parse_off_loop,
)
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.service import DevboxService
from devbox_service.errors import Conflict, NotFound
from devbox_service.previews.models import HttpServiceAuthMode
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.secrets.service import SecretService


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
        self, principal: Principal, template: TemplateRecord
    ) -> AvailabilityReason | None:
        """Why the caller cannot start a devbox from the template now (None: they can)."""
        if template.status is not TemplateStatus.READY or not template.final_snapshot_id:
            return "not_ready"
        if await self._missing_secrets(principal, await parse_off_loop(template.yaml)):
            return "requires_build"
        return None

    async def start(
        self, principal: Principal, template: TemplateRecord, request: InstantDevboxRequest
    ) -> DevboxResponse:
        """A devbox from the template's final snapshot: its files, processes and tmux
        sessions; its HTTP services exposed and the caller's secrets set once it is up.
        Raises Conflict when `unavailable` names a reason."""
        reason = await self.unavailable(principal, template)
        if reason is not None or not template.final_snapshot_id:
            raise Conflict(
                f"template {template.id} cannot start a devbox now: {reason}", state=reason
            )
        spec = await parse_off_loop(template.yaml)
        snapshot = await self._checkpoints.snapshot_info(template.final_snapshot_id)

        async def set_up(devbox_id: str) -> None:
            for step in spec.steps:
                if isinstance(step, ExposeHttpServiceStep):
                    mode = HttpServiceAuthMode(step.auth_mode) if step.auth_mode else None
                    await self._previews.expose(
                        principal, devbox_id, name=step.name, port=step.port, auth_mode=mode
                    )
            await inject_secrets(
                self._guests, principal, devbox_id, await self._saved_secrets(principal, spec)
            )

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

    async def _saved_secrets(self, principal: Principal, spec: TemplateSpec) -> dict[str, str]:
        found: dict[str, str] = {}
        for step in spec.steps:
            if isinstance(step, ExportSecretStep):
                try:
                    found[step.name] = (await self._secrets.read(principal, step.name)).value
                except NotFound:
                    continue
        return found

    async def _missing_secrets(self, principal: Principal, spec: TemplateSpec) -> list[str]:
        saved = await self._saved_secrets(principal, spec)
        return [
            s.name
            for s in spec.steps
            if isinstance(s, ExportSecretStep) and not s.optional and s.name not in saved
        ]
