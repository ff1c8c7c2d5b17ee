"""The service's own SSH connections into guests (key auth), kept warm and reused.

A guest's TCP connections never survive a restore, so a connection that fails is dropped and
opened again once; `forget` closes it when the devbox goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TypeVar

import asyncssh

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Failed, Unreachable

T = TypeVar("T")

CONNECT_TIMEOUT = 20.0
READ_CHUNK = 64 * 1024


class GuestCommandFailed(Failed):
    """A command the service ran in a guest (`run(check=True)`) exited non-zero: a step the
    service relies on broke, so it is the tree's `Failed` (500), not a foreign error."""

    def __init__(self, command: str, exit_status: int | None, stderr: str) -> None:
        super().__init__(
            f"guest command {command!r} exited {exit_status}: {stderr.strip()[-500:]}",
            command=command,
            exit_status=exit_status,
        )
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr


class _Capped:
    """The first `limit` bytes of a stream, and how many more were read and dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    async def drain(self, stream: asyncssh.SSHReader[bytes]) -> None:
        while chunk := await stream.read(READ_CHUNK):
            room = self.limit - self.kept
            if room > 0:
                self.chunks.append(chunk[:room])
                self.kept += min(room, len(chunk))
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


class GuestConnections:
    def __init__(self) -> None:
        self._connections: dict[tuple[str, int], asyncssh.SSHClientConnection] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def connection(self, endpoint: SSHEndpoint) -> asyncssh.SSHClientConnection:
        """The warm connection to a guest, opened if there is none or it was closed."""
        key = (endpoint.host, endpoint.port)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            connection = self._connections.get(key)
            if connection is None or connection.is_closed():
                connection = await asyncio.wait_for(
                    asyncssh.connect(
                        endpoint.host,
                        endpoint.port,
                        username=endpoint.username,
                        client_keys=[endpoint.private_key_path],
                        known_hosts=None,
                        config=None,  # never the operator's ~/.ssh/config (ForwardAgent, ...)
                        agent_path=None,  # nor the host's agent: guests are untrusted
                        preferred_auth="publickey",
                        keepalive_interval=5,
                        keepalive_count_max=3,
                    ),
                    CONNECT_TIMEOUT,
                )
                self._connections[key] = connection
            return connection

    async def _with_connection(
        self,
        endpoint: SSHEndpoint,
        action: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
    ) -> T:
        for attempt in (1, 2):
            connection = await self.connection(endpoint)
            try:
                return await action(connection)
            except (
                asyncssh.ConnectionLost,
                asyncssh.DisconnectError,
                BrokenPipeError,
                ConnectionResetError,
            ):
                await self.forget(endpoint)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def run(
        self,
        endpoint: SSHEndpoint,
        command: str,
        *,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> asyncssh.SSHCompletedProcess:
        async def run(connection: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
            return await connection.run(command, input=input, timeout=timeout, check=False)

        result = await self._with_connection(endpoint, run)
        if check and result.exit_status != 0:
            raise GuestCommandFailed(command, result.exit_status, str(result.stderr or ""))
        return result

    async def stream(
        self,
        endpoint: SSHEndpoint,
        command: str,
        on_output: Callable[[str], Awaitable[None]],
    ) -> int:
        """Run a command, handing its output (stdout and stderr merged) to `on_output` as it
        arrives; the exit status (-1 when a signal ended it). A guest that cannot be reached
        is `Unreachable`."""

        async def run(connection: asyncssh.SSHClientConnection) -> int:
            async with connection.create_process(
                command, stderr=asyncssh.STDOUT, encoding="utf-8", errors="replace"
            ) as process:
                while chunk := await process.stdout.read(8192):
                    await on_output(chunk)
                completed = await process.wait()
            return -1 if completed.exit_status is None else int(completed.exit_status)

        try:
            return await self._with_connection(endpoint, run)
        except (asyncssh.Error, OSError) as exc:
            raise Unreachable(f"cannot reach the guest at {endpoint.host}: {exc}") from exc

    async def execute(
        self, endpoint: SSHEndpoint, command: str, timeout: float, max_bytes: int
    ) -> tuple[int, str, str, bool]:
        """(exit status, stdout, stderr, truncated) of a command without a terminal; -1 when
        a signal or the timeout ended it. Each stream is read as it comes and only its first
        `max_bytes` are kept (the rest is read and dropped, so the command still finishes);
        `truncated` says some were dropped. A guest that cannot be reached is `Unreachable`."""

        async def run(connection: asyncssh.SSHClientConnection) -> tuple[int, str, str, bool]:
            kept = {"stdout": _Capped(max_bytes), "stderr": _Capped(max_bytes)}
            status = -1
            async with connection.create_process(command, encoding=None) as process:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.gather(
                            kept["stdout"].drain(process.stdout),
                            kept["stderr"].drain(process.stderr),
                        )
                        completed = await process.wait()
                    if completed.exit_status is not None:
                        status = int(completed.exit_status)
                except TimeoutError:
                    process.close()
            out, err = kept["stdout"], kept["stderr"]
            return status, out.text(), err.text(), out.dropped > 0 or err.dropped > 0

        try:
            return await self._with_connection(endpoint, run)
        except (asyncssh.Error, OSError) as exc:
            raise Unreachable(f"cannot reach the guest at {endpoint.host}: {exc}") from exc

    async def execute_streaming(
        self,
        endpoint: SSHEndpoint,
        command: str,
        on_output: Callable[[str, str], Awaitable[None]],
    ) -> int:
        """Run a command, handing `("stdout" | "stderr", text)` to `on_output` as it arrives;
        the exit status (-1 when a signal ended it)."""

        async def pump(stream: asyncssh.SSHReader[str], kind: str) -> None:
            while chunk := await stream.read(8192):
                await on_output(kind, chunk)

        async def run(connection: asyncssh.SSHClientConnection) -> int:
            async with connection.create_process(
                command, encoding="utf-8", errors="replace"
            ) as process:
                await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
                completed = await process.wait()
            return -1 if completed.exit_status is None else int(completed.exit_status)

        try:
            return await self._with_connection(endpoint, run)
        except (asyncssh.Error, OSError) as exc:
            raise Unreachable(f"cannot reach the guest at {endpoint.host}: {exc}") from exc

    async def write_file(
        self,
        endpoint: SSHEndpoint,
        path: str,
        data: bytes | AsyncIterable[bytes],
        mode: int = 0o644,
    ) -> None:
        """Write through SFTP into a temp name, then rename, so readers never see half. A
        stream is written as it arrives (never whole in memory); a failed write leaves no temp
        file. Only whole bytes are retried on a fresh connection (a stream cannot rewind)."""
        directory = path.rsplit("/", 1)[0] or "/"
        temporary = f"{path}.part"

        async def write(connection: asyncssh.SSHClientConnection) -> None:
            async with connection.start_sftp_client() as sftp:
                await sftp.makedirs(directory, exist_ok=True)
                try:
                    async with sftp.open(temporary, "wb") as handle:
                        if isinstance(data, bytes):
                            await handle.write(data)
                        else:
                            async for chunk in data:
                                await handle.write(chunk)
                    await sftp.chmod(temporary, mode)
                    await sftp.posix_rename(temporary, path)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await sftp.remove(temporary)
                    raise

        if isinstance(data, bytes):
            await self._with_connection(endpoint, write)
        else:
            await write(await self.connection(endpoint))

    async def forget(self, endpoint: SSHEndpoint) -> None:
        connection = self._connections.pop((endpoint.host, endpoint.port), None)
        if connection is not None:
            connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), 5)

    async def close(self) -> None:
        for host, port in list(self._connections):
            connection = self._connections.pop((host, port))
            connection.close()
