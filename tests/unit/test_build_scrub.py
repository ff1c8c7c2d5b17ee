"""Build secrets stay out of step snapshots: a step run with secrets carries a mark in its
environment, and before its snapshot the runner ends every process holding the mark, closes
its SSH session and zeroes the guest's freed memory. The guest side of the kill script is run
here for real, on this host's /proc (it is plain sh); the whole of it on VMs in
tests/vm/test_templates.py."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from support import principal

from devbox_service.auth.models import Principal, Role
from devbox_service.backends.base import SSHEndpoint
from devbox_service.devbox_templates.builds import (
    END_MARKED,
    SCRUB_MEMORY,
    STEP_MARK,
    Redactor,
    StepRunner,
)
from devbox_service.devbox_templates.models import RunRecord, RunStatus
from devbox_service.devbox_templates.spec import CommandStep, ExportSecretStep, TmuxSessionStep

ENDPOINT = SSHEndpoint(host="guest", port=22, username="root", private_key_path="key")


class Guests:
    async def guest_endpoint(
        self, principal: Principal, devbox_id: str, _act: object
    ) -> SSHEndpoint:
        return ENDPOINT


class Shell:
    """Records what the runner sends the guest; every command succeeds."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def stream(
        self, endpoint: SSHEndpoint, command: str, on_output: Callable[[str], Awaitable[None]]
    ) -> int:
        self.sent.append(command)
        return 0

    async def forget(self, endpoint: SSHEndpoint) -> None:
        self.sent.append("<forget>")


def runner(shell: Shell, runtime_secrets: dict[str, str]) -> StepRunner:
    owner = principal(role=Role.OWNER)
    run = RunRecord(
        id="run_1", template_id="tpl_1", user_id="user_1", status=RunStatus.RUNNING, created_at=0
    )
    unused = cast(Any, None)  # events, store, secrets, previews: not reached by these steps
    return StepRunner(
        principal=owner,
        run=run,
        devbox_id="devbox_1",
        events=unused,
        store=unused,
        guests=cast(Any, Guests()),
        shell=shell,
        secrets=unused,
        previews=unused,
        runtime_secrets=runtime_secrets,
        secret_wait=1,
        prompts={},
        redactor=Redactor(),
    )


def mark_of(command: str) -> str:
    (line,) = [part for part in command.split("\n") if STEP_MARK in part]
    return line.removeprefix("export ").split(" ")[0]


async def test_a_step_with_secrets_is_marked_and_scrubbed_before_its_snapshot() -> None:
    shell = Shell()
    steps = runner(shell, {"TOKEN": "tok-value"})
    await steps.carry_out(0, ExportSecretStep(name="TOKEN", run="nohup server >/dev/null &"))
    (step,) = shell.sent
    assert "export TOKEN=tok-value" in step
    mark = mark_of(step)
    assert mark.startswith(f"{STEP_MARK}=") and len(mark) > len(STEP_MARK) + 16

    await steps.scrub(0)
    kill, *rest = shell.sent[1:]
    assert kill.startswith("sh -c ") and kill.endswith(f" scrub {mark}")
    assert "tok-value" not in kill, "the scrub itself never carries the secret"
    assert rest == ["<forget>", SCRUB_MEMORY, "<forget>"]

    # a later command step gets the secret too (the contract), with a mark of its own
    shell.sent.clear()
    await steps.carry_out(1, CommandStep(run="make deploy"))
    later = mark_of(shell.sent[0])
    assert later != mark
    await steps.scrub(1)
    assert shell.sent[1].endswith(f" scrub {later}") and shell.sent[-2] == SCRUB_MEMORY


async def test_steps_without_secrets_are_not_scrubbed() -> None:
    shell = Shell()
    steps = runner(shell, {})
    await steps.carry_out(0, CommandStep(run="apt-get install -y nginx"))
    await steps.scrub(0)
    assert len(shell.sent) == 1 and STEP_MARK not in shell.sent[0]

    with_secret = runner(shell := Shell(), {"TOKEN": "v"})
    await with_secret.carry_out(0, ExportSecretStep(name="TOKEN"))  # no run: nothing ran
    await with_secret.carry_out(1, TmuxSessionStep(name="web", run="serve"))  # never gets env
    await with_secret.scrub(1)
    assert len(shell.sent) == 1 and "TOKEN" not in shell.sent[0]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_the_kill_script_ends_marked_processes_and_only_those() -> None:
    mark = f"{STEP_MARK}={secrets.token_hex(16)}"
    name, value = mark.split("=", 1)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    marked = subprocess.Popen(["sleep", "300"], env={**env, name: value})
    # a grandchild in its own session, as `nohup ... &` or `setsid` would leave one
    detached = subprocess.Popen(["sh", "-c", "setsid sleep 300 & wait"], env={**env, name: value})
    unmarked = subprocess.Popen(["sleep", "300"], env={**env, name: "another-step"})
    try:
        time.sleep(0.2)
        subprocess.run(["sh", "-c", END_MARKED, "scrub", mark], check=True, timeout=60)
        assert marked.wait(timeout=10) == -9
        assert detached.wait(timeout=10) == -9
        assert unmarked.poll() is None, "a process without the step's mark is left alone"
        leftovers = subprocess.run(
            ["sh", "-c", f'grep -lzxF "{mark}" /proc/[0-9]*/environ 2>/dev/null'],
            capture_output=True,
            text=True,
        )
        assert leftovers.stdout == "", "the setsid grandchild went too"
    finally:
        for process in (marked, detached, unmarked):
            process.kill()
            process.wait()
