"""The guests' egress sockets under a hostile guest: its connections hit its own caps and
time out, while another guest's CONNECT (or API request) is answered.

Guests are child processes carrying the marker a VM's QEMU (and so its guestfwd `socat`)
carries in its environment: the servers tell them apart the way they tell devboxes apart.
The test upstream lives on loopback, which the real address rules refuse: the tests allow
127.0.0.1 alone (the rules themselves are tested in tests/unit/test_egress_addresses.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from devbox_service.backends.base import GUEST_MARKER_VARIABLE
from devbox_service.egress import proxy as proxy_module
from devbox_service.egress.addresses import refusal
from devbox_service.egress.proxy import EgressProxy, GuestApiRelay

GENEROUS = 20.0  # seconds: a bound on hangs, never a measured duration
PER_GUEST = 8
LOOPBACK = ipaddress.ip_address("127.0.0.1")
MARKERS = {"m-hostile": "box_hostile", "m-calm": "box_calm"}

# A guest: opens `count` connections and reports what each got back (its first line, or
# "closed", or "open" if nothing came within `wait` seconds), then holds them open until
# its stdin closes. With `send`, it sends that on each and reads the answer before opening
# the next (one request at a time); without, it opens all, then looks.
GUEST = r"""
import socket, sys, select
path, count, send, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
send = send.encode().decode("unicode_escape").encode("latin-1")

def answer(s):
    ready, _, _ = select.select([s], [], [], wait)
    if not ready:
        return "open"
    try:
        data = s.recv(4096)
    except OSError:
        data = b""
    return data.split(b"\r\n")[0].decode("latin-1") if data else "closed"

conns, results = [], []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    conns.append(s)
    if send:
        s.sendall(send)
        results.append(answer(s))
if not send:
    results = [answer(s) for s in conns]
print(",".join(results), flush=True)
sys.stdin.read()
"""


class Guest:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def results(self) -> list[str]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), GENEROUS)
        return line.decode().strip().split(",")

    async def leave(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), GENEROUS)


async def guest(path: Path, marker: str, count: int, send: str = "", wait: float = 1.0) -> Guest:
    env = {**os.environ, GUEST_MARKER_VARIABLE: marker}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GUEST, str(path), str(count), send, str(wait),
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return Guest(process)


async def until(condition: object, what: str) -> None:
    async with asyncio.timeout(GENEROUS):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        proxy_module, "refusal", lambda a, own: None if a == LOOPBACK else refusal(a, own)
    )


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    """A server on loopback that answers `pong` to whatever arrives (a destination)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                writer.write(b"pong")
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def proxies(
    tmp_path: Path, upstream: int, loopback_allowed: None
) -> AsyncIterator[Callable[..., Awaitable[EgressProxy]]]:
    """Started egress proxies (timeouts short where a test waits for them, else generous)."""
    started: list[EgressProxy] = []

    async def start(
        header_timeout: float = GENEROUS, idle_timeout: float = GENEROUS
    ) -> EgressProxy:
        proxy = EgressProxy(
            tmp_path / f"egress{len(started)}.sock",
            own_addresses=set,
            ports={upstream, 443},
            guest_of=MARKERS.get,
            per_guest=PER_GUEST,
            total=4 * PER_GUEST,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
        )
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.close()


def connect(port: int) -> str:
    return f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n"


async def test_idle_connections_of_one_guest_do_not_delay_anothers_connect(
    proxies: Callable[..., Awaitable[EgressProxy]], upstream: int
) -> None:
    egress = await proxies()
    hostile = await guest(egress.path, "m-hostile", 300, wait=0.2)
    await until(lambda: egress.heads.held("box_hostile") == PER_GUEST, "hostile at its cap")
    calm = await guest(egress.path, "m-calm", 1, connect(upstream))
    assert await calm.results() == ["HTTP/1.1 200 Connection established"]
    results = await hostile.results()
    assert results.count("HTTP/1.1 503 Service Unavailable") == 300 - PER_GUEST
    assert egress.heads.held("box_hostile") <= PER_GUEST
    await calm.leave()
    await hostile.leave()


async def test_a_guest_at_its_tunnel_cap_is_refused_and_another_is_not(
    proxies: Callable[..., Awaitable[EgressProxy]], upstream: int
) -> None:
    egress = await proxies()
    hostile = await guest(egress.path, "m-hostile", PER_GUEST + 4, connect(upstream))
    results = await hostile.results()
    assert results.count("HTTP/1.1 200 Connection established") == PER_GUEST
    assert results.count("HTTP/1.1 503 Service Unavailable") == 4
    calm = await guest(egress.path, "m-calm", 1, connect(upstream))
    assert await calm.results() == ["HTTP/1.1 200 Connection established"]
    await calm.leave()
    await hostile.leave()


async def test_a_slow_request_head_and_an_idle_tunnel_are_closed(
    proxies: Callable[..., Awaitable[EgressProxy]], upstream: int
) -> None:
    egress = await proxies(header_timeout=1.0, idle_timeout=1.0)
    dripping = await guest(egress.path, "m-hostile", 2, "CONNECT 127.0.0.1", wait=GENEROUS)
    assert await dripping.results() == ["closed", "closed"]
    await dripping.leave()
    idle = await guest(egress.path, "m-hostile", 1, connect(upstream))
    assert await idle.results() == ["HTTP/1.1 200 Connection established"]
    await until(lambda: egress.slots.held("box_hostile") == 0, "the idle tunnel closed")
    await idle.leave()


async def test_refusals_come_before_any_connection_and_every_decision_is_logged(
    proxies: Callable[..., Awaitable[EgressProxy]], upstream: int, caplog: pytest.LogCaptureFixture
) -> None:
    egress = await proxies()
    caplog.set_level(logging.INFO, logger="devbox_service.egress")
    requests = (
        "CONNECT [64:ff9b::7f00:1]:443 HTTP/1.1\\r\\n\\r\\n",
        "CONNECT [2002:7f00:1::1]:443 HTTP/1.1\\r\\n\\r\\n",
        "CONNECT [::ffff:127.0.0.2]:443 HTTP/1.1\\r\\n\\r\\n",
        "CONNECT 198.18.0.1:443 HTTP/1.1\\r\\n\\r\\n",
        f"CONNECT 127.0.0.1:{upstream + 1} HTTP/1.1\\r\\n\\r\\n",
    )
    for request in requests:
        refused = await guest(egress.path, "m-calm", 1, request)
        assert await refused.results() == ["HTTP/1.1 403 Forbidden"], request
        await refused.leave()
    plain = f"GET http://127.0.0.1:{upstream}/p?token=s3cret HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
    allowed = await guest(egress.path, "m-calm", 1, plain)
    assert await allowed.results() == ["pong"]
    await allowed.leave()
    records = [r for r in caplog.records if r.name == "devbox_service.egress"]
    decisions = [(r.devbox_id, r.host, r.port, r.outcome) for r in records]  # type: ignore[attr-defined]
    assert decisions == [
        ("box_calm", "64:ff9b::7f00:1", 443, "refused"),
        ("box_calm", "2002:7f00:1::1", 443, "refused"),
        ("box_calm", "::ffff:127.0.0.2", 443, "refused"),
        ("box_calm", "198.18.0.1", 443, "refused"),
        ("box_calm", "127.0.0.1", upstream + 1, "refused"),
        ("box_calm", "127.0.0.1", upstream, "allowed"),
    ]
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in records)
    assert "s3cret" not in logged and "/p?" not in logged


@pytest.fixture
async def api(tmp_path: Path, upstream: int) -> AsyncIterator[GuestApiRelay]:
    relay = GuestApiRelay(
        tmp_path / "api.sock",
        "127.0.0.1",
        upstream,
        guest_of=MARKERS.get,
        per_guest=PER_GUEST,
        total=4 * PER_GUEST,
    )
    await relay.start()
    yield relay
    await relay.close()


async def test_the_api_relay_caps_a_guest_and_still_serves_another(api: GuestApiRelay) -> None:
    hostile = await guest(api.path, "m-hostile", 300, wait=0.2)
    results = await hostile.results()
    assert results.count("closed") == 300 - PER_GUEST
    assert api.slots.held("box_hostile") == PER_GUEST
    calm = await guest(api.path, "m-calm", 1, "ping")
    assert await calm.results() == ["pong"]
    await calm.leave()
    await hostile.leave()
