"""The SSH gateway: users SSH to the service, which proxies them to their devbox's guest sshd.

SSH carries no host name (there is no SNI), so the devbox cannot come from the name the user
dialled. It comes from the credentials instead: the username is the devbox's SSH access token,
which names exactly one devbox, and the password proves it. Each user connection gets one
connection to the guest, opened at the first channel (which is when a paused devbox is woken)
and closed with the user's connection.

Failures reaching the guest never end the gateway: they become a refused channel (with the
reason) or, once a session was accepted, a message on stderr and exit status 255, as ssh(1)
reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import asyncssh

from devbox_service.backends.base import BackendError, SSHEndpoint
from devbox_service.errors import DevboxServiceError
from devbox_service.ssh.proxy import ProxySession, TCPRelayEnd

log = logging.getLogger(__name__)

HOST_KEY_FILE = "ssh_host_ed25519_key"
_UNAVAILABLE_ADDRESS = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


class GatewayAuthority(Protocol):
    """What the gateway needs from the service: who may log in, and where their guest is."""

    async def authenticate(self, username: str, password: str) -> str | None:
        """Return the devbox id these credentials open, or None."""

    async def authenticate_api_key_login(self, username: str) -> str | None:
        """The devbox a `{devbox_id}:{api_key}` user name opens (the SDK's login, with any
        public key: the API key is the secret), or None."""

    async def authenticate_devbox_key(self, devbox_id: str, public_key: str) -> str | None:
        """The devbox when `public_key` (OpenSSH form) is its own key pair's, or None."""

    async def connect_target(self, devbox_id: str) -> SSHEndpoint:
        """Where the devbox's guest sshd is (resuming the devbox first if it is paused)."""


class GatewayError(DevboxServiceError):
    """The gateway could not start (no address to listen on, unreadable host key)."""


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def throttle_key(address: str, username: str) -> str:
    """Failures count per source address and user name: every local client (guests' port
    forwards included) comes from 127.0.0.1, so an address alone would let a few bad logins
    lock out everyone."""
    return f"{address} {username}"


class LoginThrottle:
    """Slows password guessing per key (`throttle_key`): attempts with one key run one at a
    time, each after a delay that doubles with every failure (capped), forgotten on success or
    after `forget_after` quiet seconds. Other keys are never delayed."""

    def __init__(
        self,
        *,
        base_delay: float = 0.25,
        max_delay: float = 10.0,
        forget_after: float = 900.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._by_address: dict[str, _Failures] = {}

    def failures(self, address: str) -> int:
        entry = self._by_address.get(address)
        if entry is None or time.monotonic() - entry.last > self.forget_after:
            return 0
        return entry.count

    def penalty(self, address: str) -> float:
        """Seconds the next attempt from `address` waits before its password is checked."""
        count = self.failures(address)
        if count == 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(count - 1, 32)))

    async def attempt(self, address: str, check: Callable[[], Awaitable[bool]]) -> bool:
        entry = self._entry(address)
        async with entry.lock:
            await asyncio.sleep(self.penalty(address))
            ok = await check()
            if ok:
                self._by_address.pop(address, None)
            else:
                entry.count = self.failures(address) + 1
                entry.last = time.monotonic()
                self._by_address[address] = entry
            return ok

    def _entry(self, address: str) -> _Failures:
        entry = self._by_address.get(address)
        if entry is None:
            if len(self._by_address) >= self.max_addresses:
                self._forget_oldest()
            entry = self._by_address[address] = _Failures()
        return entry

    def _forget_oldest(self) -> None:
        now = time.monotonic()
        stale = [a for a, e in self._by_address.items() if now - e.last > self.forget_after]
        for address in stale or sorted(self._by_address, key=lambda a: self._by_address[a].last):
            if not self._by_address[address].lock.locked():
                del self._by_address[address]
            if len(self._by_address) < self.max_addresses // 2:
                break


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
        self.ports: dict[str, int] = {}  # host -> bound port, filled by start()
        self._acceptors: list[asyncssh.SSHAcceptor] = []
        self._connections: set[_UserConnection] = set()

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
                    login_timeout=self.auth_timeout + self.throttle.max_delay + 30.0,
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

    def _new_connection(self) -> _UserConnection:
        return _UserConnection(self)

    async def _check_password(self, address: str, username: str, password: str) -> str | None:
        return await self._check(
            address, username, lambda: self.authority.authenticate(username, password)
        )

    async def _check_api_key_login(self, address: str, username: str) -> str | None:
        devbox_id = username.partition(":")[0]  # the key itself is never kept or logged
        return await self._check(
            address, devbox_id, lambda: self.authority.authenticate_api_key_login(username)
        )

    async def _check_devbox_key(self, address: str, username: str, public_key: str) -> str | None:
        return await self._check(
            address, username, lambda: self.authority.authenticate_devbox_key(username, public_key)
        )

    async def _check(
        self, address: str, who: str, lookup: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        """The devbox id the credentials open; a slow or failing authority denies, never hangs."""
        devbox_id: str | None = None

        async def check() -> bool:
            nonlocal devbox_id
            try:
                async with asyncio.timeout(self.auth_timeout):
                    devbox_id = await lookup()
            except Exception:
                log.exception("SSH gateway could not check credentials from %s", address)
                return False
            return devbox_id is not None

        key = throttle_key(address, who)
        if not await self.throttle.attempt(key, check):
            log.warning(
                "SSH login failed",
                extra={"address": address, "failures": self.throttle.failures(key)},
            )
            return None
        log.info("SSH login", extra={"address": address, "devbox_id": devbox_id})
        return devbox_id

    async def _connect_upstream(self, devbox_id: str) -> asyncssh.SSHClientConnection:
        """One connection to the devbox's guest sshd, or a ChannelOpenError the user can read."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                target = await self.authority.connect_target(devbox_id)
                return await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.username,
                    client_keys=[target.private_key_path],
                    known_hosts=None,  # the service made the guest; its key is not a secret to pin
                    config=None,
                    agent_path=None,
                    preferred_auth="publickey",
                    keepalive_interval=30.0,
                )
        except TimeoutError as exc:
            reason = f"devbox {devbox_id} did not answer within {self.connect_timeout:g}s"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc
        except (DevboxServiceError, BackendError) as exc:
            reason = f"devbox {devbox_id} is not available: {exc.message}"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc
        except (asyncssh.Error, OSError) as exc:
            reason = f"devbox {devbox_id} is unreachable: {exc}"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc
        except Exception as exc:
            log.exception("SSH gateway failed to connect to devbox %s", devbox_id)
            reason = f"devbox {devbox_id} is not available (internal error)"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc


class _UserConnection(asyncssh.SSHServer):
    """One user's SSH connection: password auth, then sessions and TCP forwards to the guest."""

    def __init__(self, gateway: SSHGateway) -> None:
        self._gateway = gateway
        self._conn: asyncssh.SSHServerConnection | None = None
        self._address = "?"
        self._devbox_id: str | None = None
        self._upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self._lost = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._address = str(peer[0]) if peer else "?"
        self._gateway._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._gateway._connections.discard(self)
        if self._upstream is not None:
            self._upstream.close()

    def close(self) -> None:
        """End the session telling the user why (the service is stopping)."""
        if self._conn is not None:
            self._conn.disconnect(
                asyncssh.DISC_BY_APPLICATION,
                "devbox-service is restarting: the devbox keeps running, connect again shortly",
            )

    def abort(self) -> None:
        if self._conn is not None:
            self._conn.abort()

    async def wait_closed(self) -> None:
        if self._conn is not None:
            await self._conn.wait_closed()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self._devbox_id = await self._gateway._check_password(self._address, username, password)
        return self._devbox_id is not None

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Any key for a `{devbox_id}:{api_key}` user name (the SDK makes a throw-away key
        per process), or the devbox's own key for its id; the client still proves it holds
        the key it offers."""
        if ":" in username:
            self._devbox_id = await self._gateway._check_api_key_login(self._address, username)
        else:  # the devbox's own key pair (`GET /instance/{id}/ssh/key`), user = its id
            offered = key.export_public_key("openssh").decode()
            self._devbox_id = await self._gateway._check_devbox_key(
                self._address, username, offered
            )
        return self._devbox_id is not None

    async def session_requested(self) -> ProxySession:
        upstream = await self._get_upstream()
        return ProxySession(upstream, timeout=self._gateway.connect_timeout)

    async def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> TCPRelayEnd:
        upstream = await self._get_upstream()
        up_end, down_end = TCPRelayEnd.pair()
        try:
            async with asyncio.timeout(self._gateway.connect_timeout):
                await upstream.create_connection(
                    lambda: up_end, dest_host, dest_port, orig_host, orig_port, encoding=None
                )
        except TimeoutError as exc:
            reason = f"the devbox did not open {dest_host}:{dest_port} in time"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc
        except asyncssh.ChannelOpenError:
            raise  # the guest's own refusal says best why
        except (asyncssh.Error, OSError) as exc:
            reason = f"the devbox cannot open {dest_host}:{dest_port}: {exc}"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from exc
        return down_end

    async def _get_upstream(self) -> asyncssh.SSHClientConnection:
        async with self._upstream_lock:
            if self._upstream is not None and not self._upstream.is_closed():
                return self._upstream
            if self._devbox_id is None:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "not logged in")
            upstream = await self._gateway._connect_upstream(self._devbox_id)
            if self._lost:  # the user left while the devbox was being reached
                upstream.close()
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection closed")
            self._upstream = upstream
            return upstream
