"""What the tmux domain needs from the rest of the service, as Protocols.

`TmuxService` is given a `DevboxAccess` (who may use which guest, and where it is: the
devboxes' `GuestAccess`) and an `OpenGuest` (the adapter in `remote.py`: tmux inside one guest
over SSH). Both raise only errors of `devbox_service.errors`; the domain imports no SSH or
tmux library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends.base import SSHEndpoint
from devbox_service.tmux.models import TmuxSession

COMMAND_TIMEOUT = 10.0
"""Seconds a batch of control-mode commands may take before the guest counts as unreachable."""


class DevboxAccess(Protocol):
    async def guest_endpoint(self, principal: Principal, devbox_id: str, act: Act) -> SSHEndpoint:
        """Where to reach the guest of a devbox the principal may do `act` to (WATCH to read
        its panes, TYPE to change them): NotFound when it is not visible to them,
        PermissionDenied when the policy keeps the act from them, Conflict when it is not
        running."""
        ...

    def on_destroy(self, listener: Callable[[str], Awaitable[None]]) -> None:
        """Call `listener(devbox_id)` before a devbox's VM is removed."""
        ...


class ShellResult(NamedTuple):
    status: int
    stdout: str
    stderr: str


class Watcher(Protocol):
    """A live subscription to one session's notifications (`%output %3 ...`)."""

    @property
    def closed(self) -> bool: ...

    async def aclose(self) -> None: ...


class TmuxGuest(Protocol):
    """tmux in one guest. `socket` picks the tmux server (None: the default one); a guest that
    does not answer is `Unreachable`, a session name taken `Conflict`, a missing session or
    pane `NotFound`, a command tmux refuses `InvalidInput`."""

    async def list_sessions(self, socket: str | None) -> list[TmuxSession]:
        """The sessions (the adapter's own hidden ones left out); none without a server."""
        ...

    async def new_session(self, socket: str | None, name: str) -> TmuxSession: ...

    async def rename_session(self, socket: str | None, target: str, new_name: str) -> TmuxSession:
        """Rename the session whose id (`$N`) or exact name is `target`."""
        ...

    async def kill_session(self, socket: str | None, target: str) -> str:
        """Kill the session whose id or exact name is `target`; its name."""
        ...

    async def run(
        self, socket: str | None, commands: Sequence[str], timeout: float = COMMAND_TIMEOUT
    ) -> list[list[str]]:
        """tmux commands in one round trip, without spawning a process in the guest; each
        command's output lines, or the error of the first one tmux refused."""
        ...

    async def exec(self, command: str, timeout: float) -> ShellResult:
        """A shell command in the guest (a non-zero status is a result, not an error)."""
        ...

    async def watch(
        self, socket: str | None, session_id: str, on_notification: Callable[[str], None]
    ) -> Watcher:
        """Subscribe to a session's notifications (read-only: keys and size stay untouched)."""
        ...

    async def close(self) -> None: ...


OpenGuest = Callable[[str, SSHEndpoint], TmuxGuest]
"""Opens the adapter for (devbox id, endpoint); `remote.guest_opener` makes the real one."""
