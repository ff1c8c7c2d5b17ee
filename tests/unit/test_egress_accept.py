"""The egress servers' accept loop when the process runs out of descriptors: it backs off and
warns once for the episode (not once per failed accept), then serves again."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from pathlib import Path

import pytest

from devbox_service.egress.guests import UNIDENTIFIED, GuestServer

FAILURES = 5


async def test_accept_backs_off_on_emfile_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    real_accept = loop.sock_accept
    left = FAILURES

    async def starved(sock: socket.socket) -> tuple[socket.socket, object]:
        nonlocal left
        if left > 0:
            left -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_accept(sock)

    monkeypatch.setattr(loop, "sock_accept", starved)
    served: list[str] = []

    async def handler(guest: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        served.append(guest)
        w.write(await reader.readexactly(4))
        await w.drain()

    caplog.set_level(logging.WARNING, logger="devbox_service.egress")
    server = GuestServer(tmp_path / "s.sock", handler, lambda marker: None, 1024)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 20) == b"ping"
        writer.close()
    finally:
        await server.close()
    assert server.accept_failures == FAILURES
    warnings = [r for r in caplog.records if r.name == "devbox_service.egress"]
    assert len(warnings) == 1 and "backing off" in warnings[0].getMessage()
    assert served == [UNIDENTIFIED]
