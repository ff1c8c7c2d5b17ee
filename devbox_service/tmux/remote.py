"""The adapter: tmux inside one guest over SSH, as `ports.TmuxGuest`. Two transports:

* sessions (list, create, rename, kill) through libtmux and an OpenSSH ControlMaster
  (`sessions.py`), where a handful of calls matter less than libtmux's object model;
* the hot path (send-keys, capture-pane, pane watching) through `tmux -C` control-mode clients
  on asyncssh channels: no process spawn per command (see `control.py`).

Both reconnect by themselves: a guest restored from a snapshot, resumed or rebooted drops its
TCP connections, so a closed asyncssh connection or control client is opened again on the next
call. asyncssh's errors become domain errors here, once: a guest that does not answer is
`Unreachable`. No web imports here.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncssh

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Unreachable
from devbox_service.ssh.guest import GuestConnections
from devbox_service.tmux.control import ControlClient, ControlError
from devbox_service.tmux.models import TmuxSession
from devbox_service.tmux.ports import COMMAND_TIMEOUT, OpenGuest, ShellResult
from devbox_service.tmux.sessions import CONTROL_SESSION, ENV, LibtmuxSessions

CONNECT_TIMEOUT = 20.0
TRANSPORT_ERRORS = (ControlError, asyncssh.Error, OSError, TimeoutError)


def socket_args(socket: str | None) -> list[str]:
    """tmux's server selection: a path is `-S`, a bare name `-L`, nothing the default."""
    if not socket:
        return []
    return ["-S", socket] if "/" in socket else ["-L", socket]


def guest_opener(connections: GuestConnections, runtime_dir: Path) -> OpenGuest:
    """What `TmuxService` is given to reach guests: warm SSH connections from `connections`,
    each devbox's wrapper script and ControlMaster socket under `runtime_dir`."""

    def open_guest(devbox_id: str, endpoint: SSHEndpoint) -> GuestTmux:
        return GuestTmux(devbox_id, endpoint, runtime_dir, connections)

    return open_guest


class GuestTmux:
    """tmux in one guest: a warm asyncssh connection, control clients, the libtmux wrapper."""

    def __init__(
        self,
        devbox_id: str,
        endpoint: SSHEndpoint,
        runtime_dir: Path,
        connections: GuestConnections,
    ) -> None:
        self.devbox_id = devbox_id
        self.endpoint = endpoint
        self._sessions = LibtmuxSessions(devbox_id, endpoint, runtime_dir)
        self._connections = connections
        self._clients: dict[str, ControlClient] = {}
        self._lock = asyncio.Lock()

    def _unreachable(self, exc: BaseException) -> Unreachable:
        reason = str(exc) or type(exc).__name__
        return Unreachable(f"cannot reach tmux in devbox {self.devbox_id}: {reason}")

    # sessions (libtmux)

    async def list_sessions(self, socket: str | None) -> list[TmuxSession]:
        return await self._sessions.list_sessions(socket)

    async def new_session(self, socket: str | None, name: str) -> TmuxSession:
        return await self._sessions.new_session(socket, name)

    async def rename_session(self, socket: str | None, target: str, new_name: str) -> TmuxSession:
        return await self._sessions.rename_session(socket, target, new_name)

    async def kill_session(self, socket: str | None, target: str) -> str:
        return await self._sessions.kill_session(socket, target)

    # asyncssh: shell commands and control clients

    async def exec(self, command: str, timeout: float) -> ShellResult:
        try:
            result = await self._connections.run(
                self.endpoint, f"{ENV} {command}", timeout=timeout, check=False
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        status = -1 if result.exit_status is None else result.exit_status  # None: a signal
        return ShellResult(status, str(result.stdout), str(result.stderr))

    async def run(
        self, socket: str | None, commands: Sequence[str], timeout: float = COMMAND_TIMEOUT
    ) -> list[list[str]]:
        """Commands through the server's control client; a dead client (a restored guest) is
        replaced once, transparently. tmux refusing a command is not retried."""
        for attempt in (1, 2):
            try:
                client = await self._control(socket)
                return await client.outputs(commands, timeout)
            except TRANSPORT_ERRORS as exc:
                await self.reset()
                if attempt == 2:
                    raise self._unreachable(exc) from exc
        raise AssertionError("unreachable")

    async def watch(
        self, socket: str | None, session_id: str, on_notification: Callable[[str], None]
    ) -> ControlClient:
        """A read-only control client attached to a session, for its `%output` notices."""
        args = [*socket_args(socket), "-C", "attach-session", "-r", "-t", session_id]
        command = f"{ENV} exec tmux -u " + " ".join(shlex.quote(a) for a in args)
        try:
            async with self._lock:
                return await self._open(command, on_notification)
        except TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc

    async def _control(self, socket: str | None) -> ControlClient:
        """The command client for this tmux server, started (or restarted) on demand."""
        key = socket or ""
        async with self._lock:
            client = self._clients.get(key)
            if client is None or client.closed:
                server = " ".join(shlex.quote(a) for a in socket_args(socket))
                command = (
                    f"{ENV} exec tmux -u {server} -C new-session -A -s {CONTROL_SESSION} "
                    "'exec sleep 2147483647'"
                )
                client = await self._open(command, None)
                self._clients[key] = client
            return client

    async def _open(
        self, command: str, on_notification: Callable[[str], None] | None
    ) -> ControlClient:
        for attempt in (1, 2):
            connection = await asyncio.wait_for(
                self._connections.connection(self.endpoint), CONNECT_TIMEOUT
            )
            try:
                process = await connection.create_process(command, encoding=None)
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError):
                await self._drop_connection()
                if attempt == 2:
                    raise
                continue
            return ControlClient(
                process.stdout,
                process.stdin,
                on_notification=on_notification,
                on_close=process.close,
            )
        raise AssertionError("unreachable")

    async def _drop_connection(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        await self._connections.forget(self.endpoint)

    async def reset(self) -> None:
        """Forget connections after a failure so the next call reconnects."""
        async with self._lock:
            await self._drop_connection()

    async def close(self) -> None:
        async with self._lock:
            await self._drop_connection()
        await self._sessions.close()
