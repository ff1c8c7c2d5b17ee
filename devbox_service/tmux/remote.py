"""How the service reaches tmux inside one guest: two transports over SSH.

* libtmux (the object model for sessions: list, create, rename, kill) runs a per-devbox wrapper
  script as its `tmux_bin`; the wrapper runs tmux in the guest through a persistent OpenSSH
  ControlMaster, so each libtmux call is one multiplexed channel, not a new SSH handshake.
* The hot path (send-keys, capture-pane, pane watching) goes through a `tmux -C` control-mode
  client on an asyncssh channel: no process spawn per command (see `control.py`).

Both reconnect by themselves: a guest restored from a snapshot, resumed or rebooted drops its
TCP connections, so a closed asyncssh connection or control client is opened again on the next
call, and the wrapper replaces a dead ControlMaster (and retries once) before giving up.
No web imports here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import asyncssh
import libtmux

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Unavailable
from devbox_service.ssh.guest import GuestConnections
from devbox_service.tmux.control import ChannelClosed, ControlClient, quote

CONNECT_TIMEOUT = 20.0
CONTROL_SESSION = "_devbox_ctl"
"""The hidden session the command client attaches to (a control client needs one)."""

ENV = "LC_ALL=C.UTF-8"

WRAPPER = """#!/bin/bash
# tmux in devbox {devbox_id}, through an OpenSSH ControlMaster (written by devbox-service).
opts=(-o ControlMaster=auto -o ControlPath={control_path} -o ControlPersist=600
      -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ConnectTimeout=10
      -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o LogLevel=ERROR -i {key} -p {port})
dest={dest}
remote="{env} exec tmux $(printf '%q ' "$@")"
master() {{
  # Start the master detached from our stdio: a master forked by the command itself would
  # keep the caller's pipes open (libtmux would wait for EOF until ControlPersist ends).
  ssh "${{opts[@]}}" -O check "$dest" >/dev/null 2>&1 ||
    ssh "${{opts[@]}}" -M -N -f "$dest" </dev/null >/dev/null 2>&1
}}
master
ssh "${{opts[@]}}" -n -T "$dest" -- "$remote"
rc=$?
if [ $rc -eq 255 ]; then
  # the master's connection died (restore, reboot): replace it and try once more
  ssh "${{opts[@]}}" -O exit "$dest" >/dev/null 2>&1
  master
  exec ssh "${{opts[@]}}" -n -T "$dest" -- "$remote"
fi
exit $rc
"""


def socket_args(socket: str | None) -> list[str]:
    """tmux's server selection: a path is `-S`, a bare name `-L`, nothing the default."""
    if not socket:
        return []
    return ["-S", socket] if "/" in socket else ["-L", socket]


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
        self._dir = runtime_dir / devbox_id
        self._connections = connections
        self._clients: dict[str, ControlClient] = {}
        self._lock = asyncio.Lock()
        self.wrapper = self._dir / "tmux"
        self.control_path = _short_socket_path(self._dir / "cm.sock")
        self._write_wrapper()

    def _write_wrapper(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ep = self.endpoint
        text = WRAPPER.format(
            devbox_id=self.devbox_id,
            control_path=shlex.quote(str(self.control_path)),
            key=shlex.quote(ep.private_key_path),
            port=ep.port,
            dest=shlex.quote(f"{ep.username}@{ep.host}"),
            env=ENV,
        )
        self.wrapper.write_text(text)
        self.wrapper.chmod(0o700)

    # libtmux (synchronous: call from a worker thread)

    def server(self, socket: str | None) -> libtmux.Server:
        name = socket if socket and "/" not in socket else None
        path = socket if socket and "/" in socket else None
        return libtmux.Server(socket_name=name, socket_path=path, tmux_bin=str(self.wrapper))

    # asyncssh

    async def _connect(self) -> asyncssh.SSHClientConnection:
        return await asyncio.wait_for(self._connections.connection(self.endpoint), CONNECT_TIMEOUT)

    async def exec(self, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
        """Run a shell command in the guest: (exit status, stdout, stderr); a guest that cannot
        be reached is `Unavailable` (503) for every caller."""
        try:
            result = await self._connections.run(
                self.endpoint, f"{ENV} {command}", timeout=timeout, check=False
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach devbox {self.devbox_id}: {exc}") from exc
        return int(result.exit_status or 0), str(result.stdout), str(result.stderr)

    async def control(self, socket: str | None) -> ControlClient:
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

    async def watch(
        self, socket: str | None, session_id: str, on_notification: Callable[[str], None]
    ) -> ControlClient:
        """A read-only control client attached to a session, for its `%output` notices."""
        args = [*socket_args(socket), "-C", "attach-session", "-r", "-t", session_id]
        command = f"{ENV} exec tmux -u " + " ".join(shlex.quote(a) for a in args)
        async with self._lock:
            return await self._open(command, on_notification)

    async def _open(
        self, command: str, on_notification: Callable[[str], None] | None
    ) -> ControlClient:
        for attempt in (1, 2):
            connection = await self._connect()
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
        await asyncio.to_thread(self._stop_master)

    def _stop_master(self) -> None:
        ep = self.endpoint
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [
                    "ssh",
                    "-o",
                    f"ControlPath={self.control_path}",
                    "-O",
                    "exit",
                    f"{ep.username}@{ep.host}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=False,
            )


def _short_socket_path(path: Path) -> Path:
    """Unix socket paths are limited to ~108 bytes: deep data dirs fall back to /tmp."""
    if len(str(path)) <= 90:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"devbox-tmux-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base / f"{digest}.sock"


__all__ = ["CONTROL_SESSION", "ChannelClosed", "GuestTmux", "quote", "socket_args"]
