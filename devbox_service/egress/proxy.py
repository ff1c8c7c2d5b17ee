"""What a guest may reach beyond itself, served on Unix sockets that QEMU forwards single guest
addresses to (`guestfwd`), the guest's network being otherwise closed (`restrict=on`):

- the service's API (`GuestApiRelay`): bytes relayed to the API's TCP address;
- the internet (`EgressProxy`): an HTTP proxy (CONNECT for TLS, absolute URLs for plain HTTP)
  that resolves names itself, allows the destination ports it is given, and refuses every
  address that is not global unicast or is the host's own (`addresses.refusal`).

Both sockets are shared by every devbox; `guests.GuestServer` names each connection's devbox,
and `guests.GuestSlots` caps what one devbox and all of them may hold, refusing at once
rather than queueing, so one guest's connections never delay another's. A proxy connection
takes its slot only once its request line and headers arrived (bounded in size and time).
Each proxied connection is logged with its devbox, host, port and outcome (never a path).

Nothing here imports the web layer; errors are answered to the guest as HTTP status lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from devbox_service.egress.addresses import Address, host_addresses, refusal
from devbox_service.egress.guests import (
    PER_GUEST_CONNECTIONS,
    GuestOf,
    GuestServer,
    GuestSlots,
    global_cap,
)

log = logging.getLogger("devbox_service.egress")

CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
HEADER_TIMEOUT = 10.0  # for the whole request head, not per byte (a slow drip is cut off)
IDLE_TIMEOUT = 300.0  # a relayed connection with no byte either way this long is closed
MAX_HEADER_BYTES = 16 * 1024
PER_GUEST_RESOLVING = 4  # name look-ups one devbox may have in flight (the executor is shared)
OWN_ADDRESSES_TTL = 30.0
DEFAULT_PORTS = frozenset({80, 443, 22})


def _no_guest(marker: str) -> str | None:
    return None


class EgressProxy:
    """An HTTP proxy for guests on a Unix socket, each connection counted against its devbox."""

    def __init__(
        self,
        path: Path,
        *,
        own_addresses: Callable[[], set[Address]] = host_addresses,
        ports: Iterable[int] = DEFAULT_PORTS,
        guest_of: GuestOf = _no_guest,
        per_guest: int = PER_GUEST_CONNECTIONS,
        total: int | None = None,
        shared_gid: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.path = path
        self.ports = frozenset(ports)
        self._read_own_addresses = own_addresses
        self._own: tuple[float, set[Address]] | None = None
        self._server = GuestServer(path, self._handle, guest_of, MAX_HEADER_BYTES, shared_gid)
        total = global_cap() if total is None else total
        # connections still sending their head count too (they hold a descriptor), in a
        # separate pool: a guest cannot hold a tunnel slot without having asked for anything
        self.heads = GuestSlots(per_guest, total)
        self.slots = GuestSlots(per_guest, total)
        self._resolving: Counter[str] = Counter()
        self.header_timeout, self.idle_timeout = header_timeout, idle_timeout

    async def start(self) -> None:
        await self._server.start()

    async def close(self) -> None:
        await self._server.close()

    async def _handle(
        self, guest: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        busy = self.heads.take(guest)
        if busy is not None:
            _log(guest, "", 0, "refused", busy)
            return await _answer(writer, 503, busy)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return None
        except asyncio.LimitOverrunError:
            return await _answer(writer, 431, "request headers too large")
        finally:
            self.heads.give(guest)
        busy = self.slots.take(guest)
        if busy is not None:
            _log(guest, "", 0, "refused", busy)
            return await _answer(writer, 503, busy)
        try:
            await self._proxy(guest, head, reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            self.slots.give(guest)

    async def _proxy(
        self, guest: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request_line, _, rest = head.partition(b"\r\n")
        parts = request_line.decode("latin-1").split(" ")
        if len(parts) != 3:
            return await _answer(writer, 400, "malformed request line")
        method, target, version = parts
        if method == "CONNECT":
            host, port = _split_host_port(target, 443)
            upstream = await self._open(guest, writer, host, port)
            if upstream is None:
                return None
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            return await _pipe(reader, writer, *upstream, idle=self.idle_timeout)
        if not target.startswith("http://"):
            return await _answer(writer, 400, "send absolute http:// URLs, or CONNECT for https")
        authority, _, path = target[len("http://") :].partition("/")
        host, port = _split_host_port(authority, 80)
        upstream = await self._open(guest, writer, host, port)
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
        return await _pipe(reader, writer, up_reader, up_writer, idle=self.idle_timeout)

    def _own_addresses(self) -> set[Address]:
        """The host's addresses, read again at most every `OWN_ADDRESSES_TTL` seconds (not
        from /proc on every guest connection)."""
        now = time.monotonic()
        if self._own is None or now - self._own[0] > OWN_ADDRESSES_TTL:
            self._own = (now, self._read_own_addresses())
        return self._own[1]

    async def _open(
        self, guest: str, writer: asyncio.StreamWriter, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the first allowed address of `host`, or an answer why not. Every
        address is judged before any is tried."""
        if port not in self.ports:
            reason = f"port {port} is not allowed (allowed: {_ports(self.ports)})"
            await _refuse(writer, guest, host, port, 403, reason)
            return None
        infos = await self._resolve(guest, host, port)
        if isinstance(infos, str):
            await _refuse(writer, guest, host, port, 502, infos)
            return None
        own = self._own_addresses()
        refused = [f"{address} is {why}" for _, address in infos if (why := refusal(address, own))]
        if refused:  # one refused address and the name is suspect: try none of them
            await _refuse(writer, guest, host, port, 403, "; ".join(refused))
            return None
        failures = []
        for family, address in infos:
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(str(address), port, family=family), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                failures.append(f"{address}: {exc or 'timed out'}")
                continue
            _log(guest, host, port, "allowed", str(address))
            return upstream
        await _refuse(writer, guest, host, port, 502, "; ".join(failures) or "no address")
        return None

    async def _resolve(self, guest: str, host: str, port: int) -> list[tuple[int, Address]] | str:
        """The addresses of `host` (with their families), or why not; a devbox has few
        look-ups in flight at once (the resolver's threads are shared by every guest)."""
        if self._resolving[guest] >= PER_GUEST_RESOLVING:
            return f"devbox {guest} has {PER_GUEST_RESOLVING} look-ups in flight"
        self._resolving[guest] += 1
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError, UnicodeError):
            return f"cannot resolve {host}"
        finally:
            self._resolving[guest] -= 1
            if self._resolving[guest] <= 0:
                del self._resolving[guest]
        return [(info[0], ipaddress.ip_address(info[4][0])) for info in infos]


class GuestApiRelay:
    """The service's API for guests: each connection relayed to the API's TCP address."""

    def __init__(
        self,
        path: Path,
        host: str,
        port: int,
        *,
        guest_of: GuestOf = _no_guest,
        per_guest: int = PER_GUEST_CONNECTIONS,
        total: int | None = None,
        shared_gid: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.path = path
        self.host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
        self.host = "::1" if host == "::" else self.host
        self.port = port
        self._server = GuestServer(path, self._handle, guest_of, 65536, shared_gid)
        self.slots = GuestSlots(per_guest, global_cap() if total is None else total)
        self.idle_timeout = idle_timeout

    async def start(self) -> None:
        await self._server.start()

    async def close(self) -> None:
        await self._server.close()

    async def _handle(
        self, guest: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        busy = self.slots.take(guest)
        if busy is not None:  # closed unanswered: the guest's HTTP client sees a reset
            log.info("guest api refused", extra={"devbox_id": guest, "reason": busy})
            return None
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
            await _pipe(reader, writer, *upstream, idle=self.idle_timeout)
        except (OSError, TimeoutError):
            pass
        finally:
            self.slots.give(guest)


def _log(guest: str, host: str, port: int, outcome: str, detail: str) -> None:
    """One line per egress decision: the devbox, where to, and what happened (a host and a
    port only: never a path or query, which may carry credentials)."""
    log.info(
        "egress %s",
        outcome,
        extra={
            "devbox_id": guest,
            "host": host,
            "port": port,
            "outcome": outcome,
            "detail": detail,
        },
    )


async def _refuse(
    writer: asyncio.StreamWriter, guest: str, host: str, port: int, status: int, reason: str
) -> None:
    _log(guest, host, port, "refused", reason)
    await _answer(writer, status, f"{host}:{port} refused: {reason}")


def _ports(ports: frozenset[int]) -> str:
    return ",".join(str(p) for p in sorted(ports))


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


_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    431: "Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    *,
    idle: float,
) -> None:
    """Copy both ways until either side closes, or nothing moved either way for `idle`."""
    loop = asyncio.get_running_loop()

    async def copy(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, deadline: asyncio.Timeout
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := await source.read(65536):
                deadline.reschedule(loop.time() + idle)
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()

    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(idle) as deadline:
                await asyncio.gather(
                    copy(reader, up_writer, deadline), copy(up_reader, writer, deadline)
                )
    finally:
        up_writer.close()
