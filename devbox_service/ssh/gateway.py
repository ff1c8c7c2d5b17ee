"""The SSH gateway: users SSH to the service, which proxies them to their devbox's guest sshd.

This module listens (on every host given, one port) under a host key that survives restarts,
and ends the connections it accepted when it closes. Who may log in is `login`'s (throttled
credential checks); what a connection does once in, sessions and forwards to the guest, is
`connection`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import asyncssh

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import DevboxServiceError
from devbox_service.ssh.connection import UserConnection
from devbox_service.ssh.login import LoginAuthority, Logins, LoginThrottle

log = logging.getLogger(__name__)

HOST_KEY_FILE = "ssh_host_ed25519_key"
_UNAVAILABLE_ADDRESS = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


class GatewayAuthority(LoginAuthority, Protocol):
    """What the gateway needs from the service: who may log in, and where their guest is."""

    async def connect_target(self, devbox_id: str) -> SSHEndpoint:
        """Where the devbox's guest sshd is (resuming the devbox first if it is paused)."""


class GatewayError(DevboxServiceError):
    """The gateway could not start (no address to listen on, unreadable host key)."""


def load_or_create_host_key(directory: Path) -> asyncssh.SSHKey:
    """The gateway's identity must survive restarts, or every user's known_hosts breaks."""
    path = directory / HOST_KEY_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
            try:
                os.link(tmp, path)  # never replaces a key another process wrote meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise GatewayError(f"cannot load the SSH gateway host key {path}: {exc}") from exc


class SSHGateway:
    """The listening gateway. Use as `async with SSHGateway(...) as gw:` or start()/close()."""

    def __init__(
        self,
        authority: GatewayAuthority,
        *,
        hosts: Sequence[str] = ("127.0.0.1", "::1"),
        port: int,
        host_key_dir: Path,
        connect_timeout: float = 30.0,
        auth_timeout: float = 10.0,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.authority = authority
        self.hosts = tuple(hosts)
        self.requested_port = port
        self.host_key_dir = host_key_dir
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.throttle = throttle or LoginThrottle()
        self.logins = Logins(authority, self.throttle, auth_timeout)
        self.ports: dict[str, int] = {}  # host -> bound port, filled by start()
        self._acceptors: list[asyncssh.SSHAcceptor] = []
        self._connections: set[UserConnection] = set()

    @property
    def session_count(self) -> int:
        """Users connected now (for /metrics)."""
        return len(self._connections)

    @property
    def port(self) -> int:
        """The port every host listens on (start() binds the same port on all of them)."""
        if not self.ports:
            raise GatewayError("the SSH gateway is not started")
        return next(iter(self.ports.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        key = load_or_create_host_key(self.host_key_dir)
        attempts = 5 if self.requested_port == 0 else 1  # a free port on one host may be taken
        for attempt in range(attempts):
            try:
                await self._listen_all(key)
                return
            except OSError as exc:
                await self._stop_listening()
                if attempt + 1 == attempts:
                    raise GatewayError(f"SSH gateway cannot listen: {exc}") from exc

    async def _listen_all(self, key: asyncssh.SSHKey) -> None:
        port = self.requested_port
        for host in self.hosts:
            try:
                acceptor = await asyncssh.listen(
                    host,
                    port,
                    server_factory=self._new_connection,
                    server_host_keys=[key],
                    config=None,
                    encoding=None,
                    line_editor=False,
                    agent_forwarding=False,
                    x11_forwarding=False,
                    login_timeout=self.auth_timeout + 2 * self.throttle.max_delay + 30.0,
                    keepalive_interval=30.0,
                )
            except OSError as exc:
                if exc.errno in _UNAVAILABLE_ADDRESS:
                    log.warning("SSH gateway skips %s: %s", host, exc)
                    continue
                raise
            self._acceptors.append(acceptor)
            port = self.ports[host] = acceptor.get_port()
        if not self.ports:
            raise GatewayError(f"SSH gateway found none of {list(self.hosts)} to listen on")
        log.info("SSH gateway listening", extra={"addresses": self.ports})

    async def _stop_listening(self) -> None:
        acceptors, self._acceptors = self._acceptors, []
        self.ports = {}
        for acceptor in acceptors:
            acceptor.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*(a.wait_closed() for a in acceptors))

    async def close(self) -> None:
        """Stop listening, then end every user connection (gracefully, then hard)."""
        await self._stop_listening()
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(*(c.wait_closed() for c in connections))
        except TimeoutError:
            for conn in connections:
                conn.abort()

    def _new_connection(self) -> UserConnection:
        return UserConnection(
            self.logins,
            self.authority.connect_target,
            connect_timeout=self.connect_timeout,
            registry=self._connections,
        )


__all__ = [
    "HOST_KEY_FILE",
    "GatewayAuthority",
    "GatewayError",
    "SSHGateway",
    "load_or_create_host_key",
]
