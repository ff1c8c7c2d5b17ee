"""Template rules: who sees which template (its organization), what a spec may say, what a
template looks like with its per-step cache state, and which devboxes it may start (starting
them is `instant.InstantDevboxes`', once the check here has passed)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize, permits
from devbox_service.devbox_templates.events import RunEvents
from devbox_service.devbox_templates.instant import (
    InstantDevboxes,
    SecretConsent,
    secret_consent,
)
from devbox_service.devbox_templates.models import (
    RunRecord,
    StepStatus,
    TemplateRecord,
    TemplateStatus,
)
from devbox_service.devbox_templates.runs import BuildRuns, fingerprints
from devbox_service.devbox_templates.schemas import (
    InstantDevboxAvailability,
    InstantDevboxRequest,
    TemplateCacheRequest,
    TemplateCreateRequest,
    TemplateDetail,
    TemplateStepModel,
    TemplateSummary,
    TemplateUpdateRequest,
)
from devbox_service.devbox_templates.spec import (
    CommandStep,
    ExportSecretStep,
    ExposeHttpServiceStep,
    TemplateSpec,
    TmuxSessionStep,
    decode_spec,
    encode_spec,
    parse_off_loop,
    step_title,
    step_type,
)
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.devboxes.service import DevboxService
from devbox_service.errors import Conflict, NotFound
from devbox_service.ids import new_id
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.secrets.service import SecretService


class TemplateService:
    def __init__(
        self,
        store: TemplateStore,
        events: RunEvents,
        runs: BuildRuns,
        *,
        devboxes: DevboxService,
        checkpoints: CheckpointService,
        guests: GuestAccess,
        secrets: SecretService,
        previews: HttpServiceRegistry,
    ) -> None:
        self._store = store
        self._events = events
        self._runs = runs
        self._checkpoints = checkpoints
        self._instant = InstantDevboxes(
            devboxes=devboxes,
            checkpoints=checkpoints,
            guests=guests,
            secrets=secrets,
            previews=previews,
        )

    # reading

    async def visible(
        self, principal: Principal, template_id: str, act: Act = Act.TEMPLATE_USE
    ) -> TemplateRecord:
        """The template if the policy lets the caller do `act` to it. Raises NotFound (not
        the caller's organization's), PermissionDenied (a member changing another's)."""
        template = await self._store.get(template_id)
        if template is None:
            raise NotFound.of("template", template_id)
        authorize(
            principal,
            act,
            user_id=template.user_id,
            org_id=template.org_id,
            devbox_id=None,
            resource=("template", template_id),
        )
        return template

    async def summaries(self, principal: Principal) -> list[TemplateSummary]:
        details = [await self._detail(t) for t in await self._store.for_org(principal.org_id)]
        return [msgspec.convert(d, TemplateSummary, from_attributes=True) for d in details]

    async def get(self, principal: Principal, template_id: str) -> TemplateDetail:
        return await self._detail(await self.visible(principal, template_id))

    async def detail_by_id(self, template_id: str) -> TemplateDetail:
        """A template's detail whoever asks: for callers that checked access themselves
        (share links). Raises NotFound."""
        template = await self._store.get(template_id)
        if template is None:
            raise NotFound.of("template", template_id)
        return await self._detail(template)

    async def consent(self, principal: Principal | None, template_id: str) -> SecretConsent | None:
        """What to ask the caller before their secrets go into a devbox of the template: None
        when they wrote it (they get its secrets as before); for callers that checked access
        themselves. Raises NotFound."""
        template = await self._store.get(template_id)
        if template is None:
            raise NotFound.of("template", template_id)
        if principal is not None and permits(principal, Act.TEMPLATE_SECRETS, template):
            return None
        return secret_consent(await self.spec(template))

    async def by_hash(self, principal: Principal, content_hash: str) -> TemplateDetail:
        template = await self._store.by_hash(principal.org_id, content_hash)
        if template is None:
            raise NotFound.of("template with content hash", content_hash)
        return await self._detail(template)

    async def spec(self, template: TemplateRecord) -> TemplateSpec:
        """The template's parsed spec, as stored when it was written (no YAML parsing). A row
        from before specs were stored has its YAML parsed once and the result kept."""
        if template.spec_json is not None:
            return decode_spec(template.spec_json)
        spec = await parse_off_loop(template.yaml)  # stored specs were validated when written
        await self._store.set_spec(template.id, template.yaml, encode_spec(spec))
        return spec

    async def _detail(self, template: TemplateRecord) -> TemplateDetail:
        spec = await self.spec(template)
        run = await self._store.run(template.run_id) if template.run_id else None
        steps = await self._steps(template, spec, run)
        cached = 0
        while cached < len(steps) and steps[cached].status is StepStatus.CACHED:
            cached += 1
        return TemplateDetail(
            id=template.id,
            user_id=template.user_id,
            name=template.name,
            description=template.description,
            yaml=template.yaml,
            base_snapshot_id=template.base_snapshot_id,
            content_hash=template.content_hash,
            status=template.status,
            step_count=len(spec.steps),
            cached_step_count=cached,
            final_snapshot_id=template.final_snapshot_id,
            run_id=template.run_id,
            created_at=template.created_at,
            updated_at=template.updated_at,
            steps=steps,
        )

    async def _steps(
        self, template: TemplateRecord, spec: TemplateSpec, run: RunRecord | None
    ) -> list[TemplateStepModel]:
        chain = await self._chain(template, spec)
        cached = await self._store.cached(template.org_id, chain) if chain else {}
        models = []
        for index, step in enumerate(spec.steps):
            fp = chain[index] if chain else None
            status, error = StepStatus.PENDING, None
            if fp is not None and fp in cached:
                status = StepStatus.CACHED
            elif run is not None and run.status.active and run.current_index == index:
                status = StepStatus.EXECUTING
            elif run is not None and run.failed_index == index:
                status, error = StepStatus.FAILED, run.error
            models.append(
                TemplateStepModel(
                    id=f"{template.id}:{index}",
                    index=index,
                    type=step_type(step),
                    title=step_title(step),
                    command=step.run if isinstance(step, CommandStep | TmuxSessionStep) else None,
                    http_service={"name": step.name, "port": step.port, "auth_mode": step.auth_mode}
                    if isinstance(step, ExposeHttpServiceStep)
                    else None,
                    export_secret={"name": step.name, "optional": step.optional}
                    if isinstance(step, ExportSecretStep)
                    else None,
                    tmux_session={"name": step.name, "run": step.run}
                    if isinstance(step, TmuxSessionStep)
                    else None,
                    fingerprint=fp,
                    status=status,
                    snapshot_id=cached.get(fp) if fp else None,
                    error=error,
                    updated_at=template.updated_at,
                )
            )
        return models

    async def _chain(self, template: TemplateRecord, spec: TemplateSpec) -> list[str]:
        """The steps' fingerprints, or [] when the base is gone (then nothing is cached)."""
        base = await self._base_id(template)
        return fingerprints(base, spec) if base else []

    async def _base_id(self, template: TemplateRecord) -> str | None:
        try:
            return (
                await self._checkpoints.bootable_in(template.org_id, template.base_snapshot_id)
            ).id
        except (NotFound, Conflict):
            return None

    # writing

    async def create(self, principal: Principal, request: TemplateCreateRequest) -> TemplateDetail:
        """Raises InvalidInput (naming the step and field), PayloadTooLarge, NotFound (base)."""
        spec = await parse_off_loop(request.yaml)
        await self._checkpoints.bootable(principal, request.baseSnapshotOption)
        now = time.time()
        template = TemplateRecord(
            id=new_id("tpl"),
            org_id=principal.org_id,
            user_id=principal.user_id,
            name=request.name,
            description=request.description,
            yaml=request.yaml,
            base_snapshot_id=request.baseSnapshotOption,
            content_hash=hashlib.sha256(request.yaml.encode()).hexdigest(),
            status=TemplateStatus.DRAFT,
            final_snapshot_id=None,
            run_id=None,
            created_at=now,
            updated_at=now,
            spec_json=encode_spec(spec),
        )
        await self._store.insert(template)
        return await self._detail(template)

    async def update(
        self, principal: Principal, template_id: str, request: TemplateUpdateRequest
    ) -> TemplateDetail:
        """Null fields stay; a changed spec or base keeps the cached steps it still matches.
        Whoever writes the steps is the template's author from then on (an org admin
        changing a member's steps): the one who starts it unasked with their secrets."""
        template = await self.visible(principal, template_id, Act.TEMPLATE_EDIT)
        fields: dict[str, Any] = {}
        if request.name is not None:
            fields["name"] = request.name
        if request.description is not None:
            fields["description"] = request.description
        if request.yaml is not None:
            fields["spec_json"] = encode_spec(await parse_off_loop(request.yaml))
            fields["yaml"] = request.yaml
            fields["content_hash"] = hashlib.sha256(request.yaml.encode()).hexdigest()
            fields["user_id"] = principal.user_id
        if request.baseSnapshotOption is not None:
            await self._checkpoints.bootable(principal, request.baseSnapshotOption)
            fields["base_snapshot_id"] = request.baseSnapshotOption
        if "yaml" in fields or "base_snapshot_id" in fields:
            fields["final_snapshot_id"] = None
            if not self._runs.building(template.id):
                fields["status"] = TemplateStatus.DRAFT
        if fields:
            await self._store.update(template.id, **fields)
            await self.reclaim(template.org_id)
        return await self.get(principal, template_id)

    async def delete(self, principal: Principal, template_id: str) -> None:
        """Devboxes started from it keep running (the backend keeps what they use)."""
        template = await self.visible(principal, template_id, Act.TEMPLATE_EDIT)
        await self._runs.cancel(template.id)
        await self._store.delete(template.id)
        await self.reclaim(template.org_id)

    async def reclaim(self, org_id: str) -> None:
        """Delete the step snapshots no template of the organization reaches any more."""
        wanted: set[str] = set()
        for template in await self._store.for_org(org_id):
            wanted.update(await self._chain(template, await self.spec(template)))
            if template.final_snapshot_id:
                wanted.add(template.final_snapshot_id)
        stale = [
            (fp, snapshot_id)
            for _, fp, snapshot_id in await self._store.cache_entries(org_id)
            if fp not in wanted and snapshot_id not in wanted
        ]
        await self._store.forget_steps(org_id, [fp for fp, _ in stale])
        for _, snapshot_id in stale:
            await self._checkpoints.delete_unlisted(snapshot_id)

    async def step_snapshots(self) -> set[str]:
        """Every cached step's snapshot (start-up recovery keeps them)."""
        return {snapshot_id for _, _, snapshot_id in await self._store.cache_entries()}

    async def step_snapshot_count(self, org_id: str) -> int:
        """How many cached step snapshots the organization holds (they count toward its
        snapshot limit)."""
        return len(await self._store.cache_entries(org_id))

    # builds

    async def cache(
        self, principal: Principal, template_id: str, request: TemplateCacheRequest
    ) -> str:
        template = await self.visible(principal, template_id)
        await self._checkpoints.room_for_unlisted(template.org_id)
        return await self._runs.start(principal, template, await self.spec(template), request)

    async def cancel(self, principal: Principal, template_id: str) -> None:
        template = await self.visible(principal, template_id)
        await self._runs.cancel(template.id)

    async def answer_secrets(
        self, principal: Principal, template_id: str, run_id: str, values: dict[str, str]
    ) -> None:
        await self._visible_run(principal, template_id, run_id)
        await self._runs.answer(run_id, values)

    async def events(
        self, principal: Principal, template_id: str, run_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's events (the template's current or last run without `run_id`)."""
        run = await self._visible_run(principal, template_id, run_id)
        return self._events.follow(run.id)

    async def history(
        self, principal: Principal, template_id: str, run_id: str | None
    ) -> list[dict[str, Any]]:
        run = await self._visible_run(principal, template_id, run_id)
        return await self._events.history(run.id)

    async def _visible_run(
        self, principal: Principal, template_id: str, run_id: str | None
    ) -> RunRecord:
        template = await self.visible(principal, template_id)
        wanted = run_id or template.run_id
        run = await self._store.run(wanted) if wanted else None
        if run is None or run.template_id != template.id:
            raise NotFound.of("run", wanted or "(none yet)")
        return run

    # devboxes from the template: who sees it is checked here, the rest is `InstantDevboxes`

    async def availability(
        self, principal: Principal, template_id: str
    ) -> InstantDevboxAvailability:
        try:
            template = await self.visible(principal, template_id)
        except NotFound:
            return InstantDevboxAvailability(
                template_id=template_id, available=False, reason="forbidden"
            )
        reason = await self._instant.unavailable(principal, template, await self.spec(template))
        return InstantDevboxAvailability(
            template_id=template_id, available=reason is None, reason=reason
        )

    async def instant_devbox(
        self, principal: Principal, template_id: str, request: InstantDevboxRequest
    ) -> DevboxResponse:
        """A devbox from the template's final snapshot (see `InstantDevboxes.start`)."""
        template = await self.visible(principal, template_id)
        return await self._instant.start(principal, template, await self.spec(template), request)

    async def instant_devbox_shared(
        self, principal: Principal, template_id: str, request: InstantDevboxRequest
    ) -> DevboxResponse:
        """The same from a template shared with the caller, of any organization (the
        share's visibility is the caller's check); the devbox is the caller's."""
        template = await self._store.get(template_id)
        if template is None:
            raise NotFound.of("template", template_id)
        return await self._instant.start(principal, template, await self.spec(template), request)
