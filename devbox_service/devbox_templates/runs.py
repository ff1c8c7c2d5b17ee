"""Build runs as background work: start (or join) one per template, cancel it, answer its
secret prompts, and settle runs a restart of the service interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, permits
from devbox_service.devbox_templates.builds import (
    ExposedService,
    GuestShell,
    Redactor,
    SecretPrompt,
    StepFailed,
    StepRunner,
    inject_secrets,
)
from devbox_service.devbox_templates.events import (
    BaseSelectedEvent,
    BuildEvent,
    CacheEvent,
    CancelledEvent,
    CompletedEvent,
    ErrorEvent,
    RunEvents,
    StartedEvent,
    StepCompletedEvent,
    StepFailedEvent,
    StepStartedEvent,
)
from devbox_service.devbox_templates.models import (
    RunRecord,
    RunStatus,
    TemplateRecord,
    TemplateStatus,
)
from devbox_service.devbox_templates.schemas import TemplateCacheRequest
from devbox_service.devbox_templates.spec import (
    ExportSecretStep,
    TemplateSpec,
    base_fingerprint,
    fingerprint,
    step_type,
)
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.views import DevboxViews
from devbox_service.errors import Conflict, DevboxServiceError, InvalidInput
from devbox_service.ids import new_id
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.secrets.service import SecretService

log = logging.getLogger("devbox_service.templates")

BOOT_TIMEOUT = 300.0
RESTARTED = (
    "the service restarted during this build; start it again: the steps cached so far are reused"
)


class BuildRuns:
    def __init__(
        self,
        store: TemplateStore,
        events: RunEvents,
        *,
        devboxes: DevboxService,
        checkpoints: CheckpointService,
        views: DevboxViews,
        guests: GuestAccess,
        shell: GuestShell,
        secrets: SecretService,
        previews: HttpServiceRegistry,
        secret_wait: float,
    ) -> None:
        self._store = store
        self._events = events
        self._devboxes = devboxes
        self._checkpoints = checkpoints
        self._views = views
        self._guests = guests
        self._shell = shell
        self._secrets = secrets
        self._previews = previews
        self._secret_wait = secret_wait
        self._tasks: dict[str, asyncio.Task[None]] = {}  # template id -> its running build
        self._prompts: dict[str, SecretPrompt] = {}  # run id -> the secret it waits for
        self._start_lock = asyncio.Lock()
        self._closing = False  # shutting down: runs are left for `recover` at the next start

    # starting, joining, cancelling

    async def start(
        self,
        principal: Principal,
        template: TemplateRecord,
        spec: TemplateSpec,
        request: TemplateCacheRequest,
    ) -> str:
        """A new run, or the one already building this template (two requests join one)."""
        async with self._start_lock:
            running = self._tasks.get(template.id)
            if running is not None and not running.done() and template.run_id:
                return template.run_id
            run = RunRecord(
                id=new_id("run"),
                template_id=template.id,
                user_id=principal.user_id,
                status=RunStatus.RUNNING,
                created_at=time.time(),
            )
            await self._store.insert_run(run)
            task = asyncio.create_task(self._execute(principal, template, spec, run, request))
            self._tasks[template.id] = task
            task.add_done_callback(lambda t: self._forget(template.id, t))
            return run.id

    def _forget(self, template_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(template_id) is task:
            del self._tasks[template_id]

    @property
    def active_count(self) -> int:
        """Builds running now (for /metrics)."""
        return sum(1 for task in self._tasks.values() if not task.done())

    def building(self, template_id: str) -> bool:
        task = self._tasks.get(template_id)
        return task is not None and not task.done()

    async def cancel(self, template_id: str) -> bool:
        """Stop the running build (its step's process goes with the build devbox); the cached
        steps stay. False when nothing was building."""
        task = self._tasks.get(template_id)
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return True

    async def answer(self, run_id: str, values: dict[str, str]) -> None:
        """Answer the secret a run waits for. Raises Conflict (not waiting), InvalidInput."""
        prompt = self._prompts.get(run_id)
        if prompt is None or prompt.answer.done():
            raise Conflict(f"run {run_id} is not waiting for a secret")
        if prompt.name not in values:
            raise InvalidInput(
                f"run {run_id} waits for secret {prompt.name}; send {{{prompt.name!r}: value}}",
                field=prompt.name,
            )
        prompt.answer.set_result(values[prompt.name])

    async def close(self) -> None:
        """Stop the builds without ending their runs: the next start settles them (`recover`),
        as it would after a crash."""
        self._closing = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def recover(self) -> None:
        """Runs a restart interrupted end as `error` (say how to go on); their build devboxes
        are removed. Resuming mid-run is not attempted: the cache makes a new run cheap."""
        for run in await self._store.active_runs():
            template = await self._store.get(run.template_id)
            if template is not None:
                await self._store.update(template.id, status=_settled(template))
            await self._end(run, ErrorEvent(message=RESTARTED, details=None), RunStatus.ERROR)
            if run.build_devbox_id:
                await self._devboxes.remove(run.build_devbox_id)

    # the build

    async def _execute(
        self,
        principal: Principal,
        template: TemplateRecord,
        spec: TemplateSpec,
        run: RunRecord,
        request: TemplateCacheRequest,
    ) -> None:
        build_devbox: str | None = None
        handed_over = False

        async def discard_build_devbox() -> None:
            """Before the terminal event: a client that sees it finds nothing left over."""
            nonlocal build_devbox
            if build_devbox is not None and not handed_over and not self._closing:
                doomed, build_devbox = build_devbox, None
                await asyncio.shield(self._devboxes.remove(doomed))

        try:
            await self._events.emit(
                run.id,
                StartedEvent(
                    totalSteps=len(spec.steps),
                    message=f"Building {template.name}: {len(spec.steps)} steps",
                ),
            )
            base = await self._checkpoints.bootable(principal, template.base_snapshot_id)
            chain = fingerprints(base.id, spec)
            cached = {} if request.force else await self._store.cached(template.org_id, chain)
            prefix = 0
            while prefix < len(chain) and chain[prefix] in cached:
                prefix += 1
            start_from = cached[chain[prefix - 1]] if prefix else base.id
            await self._events.emit(
                run.id,
                BaseSelectedEvent(
                    snapshotId=start_from,
                    message=f"Starting from {'step ' + str(prefix - 1) if prefix else 'the base'} "
                    f"({start_from}); {len(chain) - prefix} of {len(chain)} steps to run",
                ),
            )
            for index in range(prefix):
                await self._events.emit(
                    run.id, CacheEvent(index=index, snapshotId=cached[chain[index]])
                )
            runner = StepRunner(
                principal=principal,
                run=run,
                devbox_id="",
                events=self._events,
                store=self._store,
                guests=self._guests,
                shell=self._shell,
                secrets=self._secrets,
                previews=self._previews,
                runtime_secrets=dict(request.runtime_secrets or {}),
                secret_wait=self._secret_wait,
                prompts=self._prompts,
                redactor=Redactor(),
                use_saved=permits(principal, Act.TEMPLATE_SECRETS, template),
            )
            snapshot_info = await self._checkpoints.snapshot_info(start_from)
            devbox = await self._devboxes.start_from(
                principal,
                snapshot_info,
                name=f"{template.name} (build)",
                metadata={"template_id": template.id, "template_run_id": run.id},
            )
            build_devbox = runner.devbox_id = devbox.id
            await self._store.update_run(run.id, build_devbox_id=build_devbox)
            await self._devboxes.wait_ready(build_devbox, BOOT_TIMEOUT)
            for index in range(prefix):  # values later steps need from cached secret steps
                step = spec.steps[index]
                if isinstance(step, ExportSecretStep) and prefix < len(chain):
                    value = await runner.secret(index, step)
                    if value is not None:
                        runner.env[step.name] = value
            for index in range(prefix, len(chain)):
                step = spec.steps[index]
                await self._store.update_run(run.id, current_index=index)
                await self._events.emit(
                    run.id, StepStartedEvent(index=index, stepType=step_type(step))
                )
                try:
                    exposed = await runner.carry_out(index, step)
                except StepFailed as failed:
                    raise StepFailed(index, failed.message) from None
                except DevboxServiceError as exc:
                    raise StepFailed(index, f"step {index}: {exc.message}") from exc
                try:
                    await runner.scrub(index)  # no secret of the step in its snapshot
                except DevboxServiceError as exc:
                    raise StepFailed(index, f"step {index}: {exc.message}") from exc
                saved = await self._checkpoints.save_unlisted(build_devbox)
                await self._store.cache_step(template.org_id, chain[index], saved.id)
                await self._events.emit(run.id, _step_completed(index, saved.id, exposed))
            final = (await self._store.cached(template.org_id, [chain[-1]]))[chain[-1]]
            await inject_secrets(
                self._guests, principal, build_devbox, await runner.known_secrets(spec)
            )
            await self._devboxes.set_display_name(principal, build_devbox, template.name)
            handed_over = True
            if request.handoff_ttl_seconds is not None:
                await self._devboxes.set_ttl(
                    principal,
                    build_devbox,
                    request.handoff_ttl_seconds,
                    request.handoff_ttl_action,
                )
            view = await self._views.get(principal, build_devbox)
            await self._store.update(
                template.id, status=TemplateStatus.READY, final_snapshot_id=final
            )
            await self._end(
                run,
                CompletedEvent(
                    instanceId=build_devbox,
                    instance=msgspec.to_builtins(view),
                    http_services=msgspec.to_builtins(
                        view.networking.http_services if view.networking else []
                    ),
                    warnings=[],
                ),
                RunStatus.COMPLETED,
                final_snapshot_id=final,
                devbox_id=build_devbox,
            )
        except asyncio.CancelledError:
            if self._closing:
                raise
            await discard_build_devbox()
            await self._store.update(template.id, status=_settled(template))
            await self._end(
                run, CancelledEvent(message="the build was cancelled"), RunStatus.CANCELLED
            )
            raise
        except StepFailed as failed:
            await discard_build_devbox()
            await self._store.update_run(run.id, failed_index=failed.index)
            await self._store.update(template.id, status=TemplateStatus.FAILED)
            await self._end(
                run,
                StepFailedEvent(index=failed.index, message=failed.message),
                RunStatus.FAILED,
                error=failed.message,
            )
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            if not isinstance(exc, DevboxServiceError):
                log.exception("template build failed", extra={"run": run.id})
            await discard_build_devbox()
            await self._store.update(template.id, status=TemplateStatus.FAILED)
            await self._end(
                run,
                ErrorEvent(message="the build failed", details=message),
                RunStatus.ERROR,
                error=message,
            )
        finally:
            await discard_build_devbox()

    async def _end(
        self, run: RunRecord, event: BuildEvent, status: RunStatus, **fields: Any
    ) -> None:
        """The run's terminal event and its end, one write: the template's own status is set
        before it, so a client that reads the terminal event finds everything settled."""
        await self._events.emit(run.id, event, status=status, finished_at=time.time(), **fields)


def fingerprints(base_snapshot_id: str, spec: TemplateSpec) -> list[str]:
    """Each step's cache key: the base and every step up to it."""
    chain: list[str] = []
    previous = base_fingerprint(base_snapshot_id)
    for step in spec.steps:
        previous = fingerprint(previous, step)
        chain.append(previous)
    return chain


def _step_completed(
    index: int, snapshot_id: str, exposed: ExposedService | None
) -> StepCompletedEvent:
    """The service fields only for a step that exposed one (clients show its URL)."""
    if exposed is None:
        return StepCompletedEvent(index=index, snapshotId=snapshot_id)
    return StepCompletedEvent(
        index=index,
        snapshotId=snapshot_id,
        serviceName=exposed.name,
        servicePort=exposed.port,
        serviceUrl=exposed.url,
    )


def _settled(template: TemplateRecord) -> TemplateStatus:
    """What a template is once a run ends without completing: its last good build stands."""
    return TemplateStatus.READY if template.final_snapshot_id else TemplateStatus.DRAFT
