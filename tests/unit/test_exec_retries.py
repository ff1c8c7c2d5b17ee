"""Exec answers kept for `Idempotency-Key` retries: a retry gets the first answer, and what a
user keeps is bounded (each answer may hold megabytes of output)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from devbox_service.backends.base import SSHEndpoint
from devbox_service.instances.exec import REMEMBERED_PER_USER, InstanceExec

ENDPOINT = SSHEndpoint(host="127.0.0.1", port=22, username="root", private_key_path="/k")


class Guest:
    def __init__(self) -> None:
        self.runs = 0

    async def ready_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        return ENDPOINT

    async def execute(
        self, endpoint: SSHEndpoint, command: str, timeout: float, max_bytes: int
    ) -> tuple[int, str, str, bool]:
        self.runs += 1
        return 0, f"run {self.runs}\n", "", False

    async def execute_streaming(
        self, endpoint: SSHEndpoint, command: str, on_output: Callable[[str, str], Awaitable[None]]
    ) -> int:
        return 0


async def test_a_retry_gets_the_first_answer_and_each_user_keeps_a_bounded_number() -> None:
    guest = Guest()
    exec_ = InstanceExec(guest, guest)
    first = await exec_.run("alice", "devbox_1", "date", "key-0")
    again = await exec_.run("alice", "devbox_1", "date", "key-0")
    assert again == first and guest.runs == 1, "a retry does not run the command again"

    for n in range(1, REMEMBERED_PER_USER * 3):
        await exec_.run("alice", "devbox_1", "date", f"key-{n}")
    await exec_.run("bob", "devbox_2", "date", "key-0")
    kept = [key for key in exec_._results if key[0] == "alice"]
    assert len(kept) == REMEMBERED_PER_USER, "one user's answers are bounded"
    assert ("bob", "devbox_2", "key-0") in exec_._results, "another user's are not dropped"
    last = f"key-{REMEMBERED_PER_USER * 3 - 1}"
    runs = guest.runs
    await exec_.run("alice", "devbox_1", "date", last)
    assert guest.runs == runs, "the newest answers are the ones kept"
    await exec_.run("alice", "devbox_1", "date", "key-0")
    assert guest.runs == runs + 1, "the oldest was forgotten: its retry runs again"
