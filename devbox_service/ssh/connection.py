"""One user's connection through the gateway: login, then sessions and forwards to the guest.

Each user connection gets one connection to the guest, opened at the first channel (which is
when a paused devbox is woken) and closed with the user's connection. Failures reaching the
guest never end the gateway: they become a refused channel (with the reason) or, once a
session was accepted, a message on stderr and exit status 255, as ssh(1) reports them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from devbox_service.backends.base import BackendError, SSHEndpoint
from devbox_service.errors import DevboxServiceError
from devbox_service.ssh.login import Logins
from devbox_service.ssh.proxy import ProxySession, TCPRelayEnd

log = logging.getLogger(__name__)

ConnectTarget = Callable[[str], Awaitable[SSHEndpoint]]


async def connect_guest(
    connect_target: ConnectTarget, devbox_id: str, timeout: float
) -> asyncssh.SSHClientConnection:
    """One connection to the devbox's guest sshd, or a ChannelOpenError the user can read."""
    try:
        async with asyncio.timeout(timeout):
            target = await connect_target(devbox_id)
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
        reason = f"devbox {devbox_id} did not answer within {timeout:g}s"
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


class UserConnection(asyncssh.SSHServer):
    """One user's SSH connection: password auth, then sessions and TCP forwards to the guest.

    It joins `registry` (the gateway's open connections) while connected, so the gateway can
    count and close them without knowing more of them than `close`, `abort` and `wait_closed`.
    """

    def __init__(
        self,
        logins: Logins,
        connect_target: ConnectTarget,
        *,
        connect_timeout: float,
        registry: set[UserConnection],
    ) -> None:
        self._logins = logins
        self._connect_target = connect_target
        self._connect_timeout = connect_timeout
        self._registry = registry
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
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._registry.discard(self)
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

    # login ----------------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self._devbox_id = await self._logins.password(self._address, username, password)
        return self._devbox_id is not None

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Any key for a `{devbox_id}:{api_key}` user name (the SDK makes a throw-away key
        per process), or the devbox's own key for its id; the client still proves it holds
        the key it offers."""
        if ":" in username:
            self._devbox_id = await self._logins.api_key_login(self._address, username)
        else:  # the devbox's own key pair (`GET /instance/{id}/ssh/key`), user = its id
            offered = key.export_public_key("openssh").decode()
            self._devbox_id = await self._logins.devbox_key(self._address, username, offered)
        return self._devbox_id is not None

    # channels -------------------------------------------------------------------------------

    async def session_requested(self) -> ProxySession:
        upstream = await self._get_upstream()
        return ProxySession(upstream, timeout=self._connect_timeout)

    async def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> TCPRelayEnd:
        upstream = await self._get_upstream()
        up_end, down_end = TCPRelayEnd.pair()
        try:
            async with asyncio.timeout(self._connect_timeout):
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
            upstream = await connect_guest(
                self._connect_target, self._devbox_id, self._connect_timeout
            )
            if self._lost:  # the user left while the devbox was being reached
                upstream.close()
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection closed")
            self._upstream = upstream
            return upstream
