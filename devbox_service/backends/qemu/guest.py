"""The service's own SSH access to guests (asyncssh), for commands and readiness beyond sshd.

Host keys are not checked: every guest of an image shares its host key, the connection only
goes to a loopback port QEMU forwards, and users never reach guests through this key.
"""

from __future__ import annotations

import asyncio

import asyncssh

from devbox_service.backends.base import BackendTimeout, GuestUnreachable, SSHEndpoint


async def connect(endpoint: SSHEndpoint, timeout: float = 30.0) -> asyncssh.SSHClientConnection:
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncssh.connect(
                endpoint.host,
                endpoint.port,
                username=endpoint.username,
                client_keys=[endpoint.private_key_path],
                known_hosts=None,
                agent_path=None,
            )
        return conn
    except TimeoutError:
        raise GuestUnreachable(
            f"SSH to {endpoint.host}:{endpoint.port} timed out", console_tail=""
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise GuestUnreachable(
            f"SSH to {endpoint.host}:{endpoint.port} failed: {exc}", console_tail=""
        ) from exc


async def run(
    endpoint: SSHEndpoint,
    command: str,
    *,
    timeout: float = 30.0,
    conn: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHCompletedProcess:
    """Run one command (on `conn` if given, else on a fresh connection); no check of status."""
    try:
        async with asyncio.timeout(timeout):
            if conn is not None:
                result = await conn.run(command, check=False)
            else:
                async with await connect(endpoint, timeout) as fresh:
                    result = await fresh.run(command, check=False)
    except TimeoutError:
        raise BackendTimeout(f"guest command timed out: {command}", command=command) from None
    return result
