"""One build run: boot from the longest cached prefix of steps, run the rest in a build
devbox, save memory and disk after each step (so processes started by one step, tmux
sessions included, live on in every later step and every devbox started from the template),
and say what happens as events.

Secrets never reach an event, a log line or a stored definition: their values live in the
run's memory only, are redacted from output, and are written into a devbox (a 0600 env file)
only for the user who gets that devbox.

Nor do they reach a step's snapshot: a step run with secrets in its environment carries a
per-step mark there too, and before the step's snapshot every process still holding the mark
(whatever the step left running, its children, a tmux server it started) is ended, the
service's SSH session into the guest is closed, and the guest's freed memory is zeroed
(`SCRUB_MEMORY`). Long-lived processes belong in `tmuxSession` steps, which never get secrets.
A saved secret of the user running a build is used without asking only when that user wrote
the template; for someone else's template the user says so per secret (`runtime_secrets`
`{NAME: "__USE_SAVED__"}`) or answers the prompt.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends.base import SSHEndpoint
from devbox_service.devbox_templates.events import (
    AwaitingInputEvent,
    OutputEvent,
    PostSecretInstanceEvent,
    RunEvents,
)
from devbox_service.devbox_templates.models import RunRecord, RunStatus
from devbox_service.devbox_templates.spec import (
    CommandStep,
    ExportSecretStep,
    ExposeHttpServiceStep,
    Step,
    TemplateSpec,
    TmuxSessionStep,
)
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.errors import NotFound
from devbox_service.previews.models import HttpServiceAuthMode
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.secrets.service import SecretService

SKIP = "__SKIP__"
USE_SAVED = "__USE_SAVED__"
REDACTED = "[redacted]"
SECRETS_ENV_FILE = "/root/.devbox/secrets.env"
SECRETS_PROFILE = "/etc/profile.d/devbox-secrets.sh"
FAILURE_TAIL_LINES = 20
TAIL_LINE_CHARS = 500  # of each of those lines
STEP_OUTPUT_MAX_CHARS = 1024 * 1024
"""Output one step stores as events; the rest is dropped (a note says so), so a step that
prints without end fills neither the database nor a follower's page."""

STEP_MARK = "DEVBOX_STEP_SECRETS"  # in the environment of a step run with secrets

# Ends every process whose environment holds the step's mark: stopped first (no more forks),
# then killed, twice over for a process forked between the passes.
END_MARKED = (
    "for pass in 1 2; do for sig in STOP KILL; do for e in /proc/[0-9]*/environ; do "
    'p=${e#/proc/}; p=${p%/environ}; [ "$p" = "$$" ] && continue; '
    'grep -qzxF "$1" "$e" 2>/dev/null && kill -$sig "$p" 2>/dev/null; '
    "done; done; done; true"
)
# What the boot snapshots do before they are saved (backends/qemu/session.py SETTLE_MEMORY):
# page cache dropped, free memory compacted and faulted in as zeros once, so the pages the
# ended processes held (their environment, their heap) are zeros in the snapshot.
SCRUB_MEMORY = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory; "
    "free_mb=$(awk '/MemFree/{print int($2 * 9 / 10 / 1024)}' /proc/meminfo); "
    "[ $free_mb -gt 2048 ] && free_mb=2048; "
    "dd if=/dev/zero of=/dev/null bs=${free_mb}M count=1 2>/dev/null; "
    "echo 3 > /proc/sys/vm/drop_caches; true"
)


class GuestShell(Protocol):
    """Runs a command in a guest, streaming its output (an adapter in ssh/)."""

    async def stream(
        self, endpoint: SSHEndpoint, command: str, on_output: Callable[[str], Awaitable[None]]
    ) -> int: ...

    async def forget(self, endpoint: SSHEndpoint) -> None:
        """Close the connection kept to the guest (its sshd session process ends)."""


class StepFailed(Exception):
    """A step could not be carried out; the run ends with `step_failed`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


class ExposedService(NamedTuple):
    """What an `exposeHttpService` step made, for its `step_completed` event."""

    name: str
    port: int
    url: str


class SecretPrompt:
    """A run waiting for one secret: answered by `POST .../cache/{run_id}/secrets`."""

    def __init__(self, index: int, name: str, optional: bool) -> None:
        self.index = index
        self.name = name
        self.optional = optional
        self.answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()


class Redactor:
    """Replaces secret values in output; holds back a line's end until it is complete, so a
    value split across two chunks is still caught."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._pending = ""

    def add(self, value: str) -> None:
        if value and value not in self.values:
            self.values.append(value)
            self.values.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        cut = text.rfind("\n") + 1
        longest = max((len(v) for v in self.values), default=0)
        if cut == 0 and len(text) > max(4096, longest * 2):
            cut = len(text) - longest  # a long line without newline: pass most of it on
        self._pending = text[cut:]
        return self.redact(text[:cut])

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self.redact(text)


def env_exports(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


class StepRunner:
    """Carries out one step in the build devbox (the guest side of a build)."""

    def __init__(
        self,
        *,
        principal: Principal,
        run: RunRecord,
        devbox_id: str,
        events: RunEvents,
        store: TemplateStore,
        guests: GuestAccess,
        shell: GuestShell,
        secrets: SecretService,
        previews: HttpServiceRegistry,
        runtime_secrets: dict[str, str],
        secret_wait: float,
        prompts: dict[str, SecretPrompt],
        redactor: Redactor,
        use_saved: bool = True,
    ) -> None:
        self.principal = principal
        self.run = run
        self.devbox_id = devbox_id
        self.events = events
        self.store = store
        self.guests = guests
        self.shell = shell
        self.secrets = secrets
        self.previews = previews
        self.runtime_secrets = runtime_secrets
        self.secret_wait = secret_wait
        self.prompts = prompts
        self.redactor = redactor
        self.use_saved = use_saved  # the builder wrote the template: saved secrets as asked
        self.env: dict[str, str] = {}
        self.marks: list[str] = []  # marks of the steps run with secrets, not yet scrubbed

    async def carry_out(self, index: int, step: Step) -> ExposedService | None:
        """Run the step; the HTTP service it exposed, if it is an `exposeHttpService` step."""
        if isinstance(step, CommandStep):
            await self._shell(index, step.run)
        elif isinstance(step, ExportSecretStep):
            value = await self.secret(index, step)
            if value is not None:
                self.env[step.name] = value
                if step.run:
                    await self._shell(index, step.run)
        elif isinstance(step, TmuxSessionStep):
            command = f"tmux new-session -d -s {shlex.quote(step.name)} {shlex.quote(step.run)}"
            await self._shell(index, command, with_env=False)
        elif isinstance(step, ExposeHttpServiceStep):
            return await self._expose(step)
        return None

    async def _shell(self, index: int, script: str, *, with_env: bool = True) -> None:
        endpoint = await self.guests.guest_endpoint(self.principal, self.devbox_id, Act.EXEC)
        prefix = ""
        if with_env and self.env:
            mark = f"{STEP_MARK}={secrets.token_hex(16)}"
            self.marks.append(mark)
            prefix = env_exports(self.env) + f"export {mark}\n"
        command = f"cd /root && {prefix}exec bash -l -c {shlex.quote(script)}"
        tail: list[str] = []
        stored = 0

        async def store(shown: str) -> None:
            nonlocal stored
            tail.extend(
                line[-TAIL_LINE_CHARS:] for line in shown.splitlines()[-FAILURE_TAIL_LINES:]
            )
            del tail[:-FAILURE_TAIL_LINES]
            room = STEP_OUTPUT_MAX_CHARS - stored
            if room <= 0:
                return
            stored += len(shown)
            if len(shown) > room:
                note = f"\n[output over {STEP_OUTPUT_MAX_CHARS} characters: the rest is not kept]\n"
                shown = shown[:room] + note
            await self.events.emit(self.run.id, OutputEvent(index=index, content=shown))

        async def output(chunk: str) -> None:
            if shown := self.redactor.feed(chunk):
                await store(shown)

        status = await self.shell.stream(endpoint, command, output)
        if rest := self.redactor.flush():
            await store(rest)
        if status != 0:
            last = "\n".join(tail[-FAILURE_TAIL_LINES:])
            how = "was killed" if status < 0 else f"exited with status {status}"
            raise StepFailed(
                index, f"step {index} {how}" + (f"; last output:\n{last}" if last else "")
            )

    async def scrub(self, index: int) -> None:
        """Before a step's snapshot: end the processes a step run with secrets left behind,
        close the SSH session that carried the secrets in, and zero the freed memory. Nothing
        for a step that ran without secrets. Raises StepFailed when the guest refuses."""
        if not self.marks:
            return
        endpoint = await self.guests.guest_endpoint(self.principal, self.devbox_id, Act.EXEC)

        async def ignore(_: str) -> None:
            return None

        for mark in self.marks:
            script = f"sh -c {shlex.quote(END_MARKED)} scrub {shlex.quote(mark)}"
            if await self.shell.stream(endpoint, script, ignore) != 0:
                raise StepFailed(index, f"step {index}: its processes could not be ended")
        self.marks.clear()
        await self.shell.forget(endpoint)
        if await self.shell.stream(endpoint, SCRUB_MEMORY, ignore) != 0:
            raise StepFailed(index, f"step {index}: the guest's memory could not be cleared")
        await self.shell.forget(endpoint)

    async def _expose(self, step: ExposeHttpServiceStep) -> ExposedService:
        mode = HttpServiceAuthMode(step.auth_mode) if step.auth_mode else None
        await self.previews.expose(
            self.principal, self.devbox_id, name=step.name, port=step.port, auth_mode=mode
        )
        listed = await self.previews.http_services_for([self.devbox_id])
        url = next(s.url for s in listed[self.devbox_id] if s.name == step.name)
        return ExposedService(step.name, step.port, url)

    async def secret(self, index: int, step: ExportSecretStep) -> str | None:
        """The run's runtime value, else the user's saved one, else ask and wait. None means
        skipped (an optional secret nobody gave)."""
        given = self.runtime_secrets.get(step.name)
        if given is not None and given != USE_SAVED:
            return self._accept(step, given)
        saved = await self.saved(step.name) if self._may_use_saved(step.name) else None
        if saved is not None:
            return self._accept(step, saved)
        return await self._ask(index, step)

    def _may_use_saved(self, name: str) -> bool:
        """The builder's saved secret goes to the steps only for their own template, or when
        they asked for it by name (`runtime_secrets` `{name: "__USE_SAVED__"}`)."""
        return self.use_saved or self.runtime_secrets.get(name) == USE_SAVED

    async def known_secrets(self, spec: TemplateSpec) -> dict[str, str]:
        """The values of the template's secrets this run knows without asking: for the
        devbox the user gets."""
        known: dict[str, str] = {}
        for step in spec.steps:
            if not isinstance(step, ExportSecretStep):
                continue
            value = self.env.get(step.name) or self.runtime_secrets.get(step.name)
            if value in (None, SKIP, USE_SAVED):
                value = await self.saved(step.name) if self._may_use_saved(step.name) else None
            if value is not None:
                known[step.name] = value
        return known

    async def saved(self, name: str) -> str | None:
        try:
            return (await self.secrets.read(self.principal, name)).value
        except NotFound:
            return None

    def _accept(self, step: ExportSecretStep, value: str) -> str | None:
        if value == SKIP:
            if not step.optional:
                raise StepFailed(-1, f"secret {step.name} is required and cannot be skipped")
            return None
        if step.redact:
            self.redactor.add(value)
        return value

    async def _ask(self, index: int, step: ExportSecretStep) -> str | None:
        prompt = SecretPrompt(index, step.name, step.optional)
        self.prompts[self.run.id] = prompt
        deadline = time.time() + self.secret_wait
        await self.store.update_run(self.run.id, status=RunStatus.AWAITING_INPUT)
        await self.events.emit(
            self.run.id,
            AwaitingInputEvent(
                index=index,
                secretName=step.name,
                hasSaved=False,
                optional=step.optional,
                defaultAction="skip" if step.optional else "wait",
                deadlineAt=int(deadline * 1000),
                countdownSeconds=int(self.secret_wait),
                runId=self.run.id,
            ),
        )
        try:
            value = await asyncio.wait_for(asyncio.shield(prompt.answer), self.secret_wait)
        except TimeoutError:
            value = None
        finally:
            self.prompts.pop(self.run.id, None)
            await self.store.update_run(self.run.id, status=RunStatus.RUNNING)
        if value is None:
            if step.optional:
                await self.events.emit(
                    self.run.id,
                    PostSecretInstanceEvent(
                        index=index, message=f"optional secret {step.name} skipped"
                    ),
                )
                return None
            raise StepFailed(index, f"secret {step.name} was not given before the deadline")
        await self.events.emit(
            self.run.id,
            PostSecretInstanceEvent(index=index, message=f"secret {step.name} received; resuming"),
        )
        return self._accept(step, value)


async def inject_secrets(
    guests: GuestAccess, principal: Principal, devbox_id: str, env: dict[str, str]
) -> None:
    """The template's secrets as environment variables of login shells in a devbox (0600)."""
    if not env:
        return
    await guests.write_file(
        principal, devbox_id, SECRETS_ENV_FILE, env_exports(env).encode(), mode=0o600
    )
    snippet = f"[ -r {SECRETS_ENV_FILE} ] && . {SECRETS_ENV_FILE}\n"
    await guests.write_file(principal, devbox_id, SECRETS_PROFILE, snippet.encode())
