"""Which guest a connection on the shared egress sockets comes from, how many connections
each guest and all guests together may hold, and an accept loop that survives running out
of file descriptors.

Every devbox's QEMU forwards to the same Unix sockets; per connection its guestfwd starts a
`socat` (detached: its own session, re-parented), which keeps QEMU's environment. QEMU is
launched with `GUEST_MARKER_VARIABLE` set, so the peer's pid (SO_PEERCRED) leads to the
marker in /proc/<pid>/environ and the marker to the devbox (`VMBackend.instance_of_guest`).
A guest cannot change either. Connections whose peer carries no marker (a VM launched
before markers existed) share one bucket, `UNIDENTIFIED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from devbox_service.backends.base import GUEST_MARKER_VARIABLE
from devbox_service.sockets import prepare_guest_socket_dir, share_socket

log = logging.getLogger("devbox_service.egress")

UNIDENTIFIED = "unidentified"
PER_GUEST_CONNECTIONS = 32  # open connections one devbox may hold on one egress socket
FDS_PER_CONNECTION = 4  # guest side + upstream (+ the API's own end, for the relay), spare
MIN_GLOBAL_CONNECTIONS = 16
ACCEPT_BACKOFF_FIRST = 0.05  # seconds; doubled while accept() keeps failing
ACCEPT_BACKOFF_MAX = 2.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

GuestOf = Callable[[str], str | None]
Handler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def global_cap(servers: int = 2) -> int:
    """Connections one egress server may hold: a share of the fd limit, so guests can never
    take the descriptors the API and the VMs need (the relay and the proxy are two servers)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(MIN_GLOBAL_CONNECTIONS, soft // (FDS_PER_CONNECTION * servers * 2))


def peer_marker(conn: socket.socket) -> str | None:
    """The marker in the environment of the process at the other end of `conn`, if any."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = GUEST_MARKER_VARIABLE.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def identify(conn: socket.socket, guest_of: GuestOf) -> str:
    """The devbox id a connection belongs to, or `UNIDENTIFIED`."""
    marker = peer_marker(conn)
    if marker is None:
        return UNIDENTIFIED
    return guest_of(marker) or UNIDENTIFIED


class GuestSlots:
    """Counted connections per guest and in all; taking one never waits (a full guest is
    refused at once, so it cannot queue in front of another)."""

    def __init__(self, per_guest: int, total: int) -> None:
        self.per_guest, self.total = per_guest, total
        self._held: Counter[str] = Counter()

    def take(self, guest: str) -> str | None:
        """None if a slot was taken for `guest`, else why not."""
        if self._held[guest] >= self.per_guest:
            return f"devbox {guest} has {self._held[guest]} connections open"
        if sum(self._held.values()) >= self.total:
            return "the service's egress is at capacity"
        self._held[guest] += 1
        return None

    def give(self, guest: str) -> None:
        self._held[guest] -= 1
        if self._held[guest] <= 0:
            del self._held[guest]

    def held(self, guest: str) -> int:
        return self._held[guest]


class GuestServer:
    """A Unix socket server that names each connection's guest and accepts with back-off:
    when accept() fails for lack of descriptors it waits (doubling, up to a cap) and warns
    once per episode, instead of spinning and logging every failure."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        guest_of: GuestOf,
        limit: int,
        shared_gid: int | None = None,
    ) -> None:
        self.path, self._handler, self._guest_of, self._limit = path, handler, guest_of, limit
        self.shared_gid = shared_gid  # QEMU's group, when QEMU runs as another user
        self._sock: socket.socket | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accept_failures = 0

    async def start(self) -> None:
        # only the service's user may connect, and QEMU's group if given (the socat a
        # guest's connection spawns runs as QEMU's user)
        prepare_guest_socket_dir(self.path.parent, self.shared_gid)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        share_socket(self.path, self.shared_gid)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._loop_task = asyncio.create_task(self._accept_loop(sock))

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self.accept_failures += 1
                if delay == 0.0:
                    log.warning(
                        "egress accept failed; backing off",
                        extra={"socket": str(self.path), "error": exc.strerror},
                    )
                delay = min(ACCEPT_BACKOFF_MAX, max(ACCEPT_BACKOFF_FIRST, delay * 2))
                await asyncio.sleep(delay)
                continue
            delay = 0.0
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        guest = identify(conn, self._guest_of)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=self._limit)
        except OSError:
            conn.close()
            return
        try:
            await self._handler(guest, reader, writer)
        finally:
            writer.close()
