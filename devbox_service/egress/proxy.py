"""What a guest may reach beyond itself, served on Unix sockets that QEMU forwards single guest
addresses to (`guestfwd`), the guest's network being otherwise closed (`restrict=on`):

- the service's API (`GuestApiRelay`): bytes relayed to the API's TCP address;
- the internet (`EgressProxy`): an HTTP proxy (CONNECT for TLS, absolute URLs for plain HTTP)
  that resolves names itself and refuses every destination on the host or a private network:
  loopback, the host's own addresses, RFC 1918, CGNAT, link-local, multicast, unspecified.

Nothing here imports the web layer; errors are answered to the guest as HTTP status lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from devbox_service.sockets import prepare_guest_socket_dir, share_socket

log = logging.getLogger("devbox_service.egress")

CONNECT_TIMEOUT = 10.0
HEADER_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 256

BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_addresses() -> set[Address]:
    """Every address of this host's interfaces (a guest must not reach host services)."""
    found = _ipv4_interface_addresses()
    with contextlib.suppress(OSError):
        for _, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(sockaddr[0]))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(ipaddress.ip_address(":".join(raw[i : i + 4] for i in range(0, 32, 4))))
    return found


def _ipv4_interface_addresses() -> set[Address]:
    """IPv4 addresses of local interfaces, from the kernel's local routing table."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(ipaddress.ip_address(previous.split()[-1]))
    return found


def refusal(address: Address, own: set[Address]) -> str | None:
    """Why a guest may not reach `address`, or None."""
    if address in own:
        return "an address of the devbox's host"
    for network in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return f"a private or local address ({network})"
    return None


OWN_ADDRESSES_TTL = 30.0


class EgressProxy:
    """An HTTP proxy for guests on a Unix socket; every accepted connection is one guest's."""

    def __init__(
        self,
        path: Path,
        *,
        own_addresses: Callable[[], set[Address]] = host_addresses,
        shared_gid: int | None = None,
    ) -> None:
        self.path = path
        self.shared_gid = shared_gid  # QEMU's group, when QEMU runs as another user
        self._read_own_addresses = own_addresses
        self._own: tuple[float, set[Address]] | None = None
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> None:
        self._server = await _serve_unix(self.path, self._handle, self.shared_gid)

    async def close(self) -> None:
        await _close(self._server)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                await self._proxy(reader, writer)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                pass
            finally:
                writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
        if len(head) > MAX_HEADER_BYTES:
            return await _answer(writer, 431, "request headers too large")
        request_line, _, rest = head.partition(b"\r\n")
        parts = request_line.decode("latin-1").split(" ")
        if len(parts) != 3:
            return await _answer(writer, 400, "malformed request line")
        method, target, version = parts
        if method == "CONNECT":
            host, port = _split_host_port(target, 443)
            upstream = await self._open(writer, host, port)
            if upstream is None:
                return None
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            return await _pipe(reader, writer, *upstream)
        if not target.startswith("http://"):
            return await _answer(writer, 400, "send absolute http:// URLs, or CONNECT for https")
        authority, _, path = target[len("http://") :].partition("/")
        host, port = _split_host_port(authority, 80)
        upstream = await self._open(writer, host, port)
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        headers = [
            line
            for line in rest.split(b"\r\n")
            if line and not line.lower().startswith((b"proxy-", b"connection:"))
        ]
        forwarded = f"{method} /{path} {version}\r\n".encode("latin-1")
        up_writer.write(forwarded + b"\r\n".join([*headers, b"Connection: close"]) + b"\r\n\r\n")
        await up_writer.drain()
        return await _pipe(reader, writer, up_reader, up_writer)

    def _own_addresses(self) -> set[Address]:
        """The host's addresses, read again at most every `OWN_ADDRESSES_TTL` seconds (not
        from /proc on every guest connection)."""
        now = time.monotonic()
        if self._own is None or now - self._own[0] > OWN_ADDRESSES_TTL:
            self._own = (now, self._read_own_addresses())
        return self._own[1]

    async def _open(
        self, writer: asyncio.StreamWriter, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the first allowed address of `host`, or an answer why not."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            await _answer(writer, 502, f"cannot resolve {host}")
            return None
        own = self._own_addresses()
        reasons = []
        for family, _, _, _, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            reason = refusal(address, own)
            if reason is not None:
                reasons.append(f"{address} is {reason}")
                continue
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(address), port, family=family), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                reasons.append(f"{address}: {exc or 'timed out'}")
        status = 403 if reasons and all(" is " in r for r in reasons) else 502
        await _answer(writer, status, f"{host}:{port} refused: " + "; ".join(reasons))
        return None


class GuestApiRelay:
    """The service's API for guests: each connection relayed to the API's TCP address."""

    def __init__(self, path: Path, host: str, port: int, *, shared_gid: int | None = None) -> None:
        self.path = path
        self.shared_gid = shared_gid
        self.host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
        self.host = "::1" if host == "::" else self.host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await _serve_unix(self.path, self._handle, self.shared_gid)

    async def close(self) -> None:
        await _close(self._server)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
            await _pipe(reader, writer, *upstream)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


def _split_host_port(authority: str, default: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port else default
    host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
    if not host:
        return authority, default
    return host, int(port) if port else default


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n".encode()
        + b"Content-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()


_PHRASES = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes."""

    async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()

    try:
        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
    finally:
        up_writer.close()


async def _serve_unix(
    path: Path,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
    shared_gid: int | None,
) -> asyncio.Server:
    """Listen on `path`: only the service's user may connect, and QEMU's group if given (the
    socat a guest's connection spawns runs as QEMU's user)."""
    prepare_guest_socket_dir(path.parent, shared_gid)
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(handler, path=str(path))  # type: ignore[arg-type]
    share_socket(path, shared_gid)
    return server


async def _close(server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
