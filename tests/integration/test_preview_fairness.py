"""The preview proxy's fairness: a devbox's slow streams hold its own slots, never others'."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devbox_service.previews.proxy import PreviewBusy, PreviewProxy


async def nothing() -> AsyncIterator[bytes]:
    return
    yield b""


@pytest.fixture
async def endless_stream() -> AsyncIterator[int]:
    """An HTTP server whose answers never end (a dev server's event stream, say)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        try:
            while True:
                writer.write(b"data: tick\n\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_one_devboxs_streams_cannot_starve_another(endless_stream: int) -> None:
    proxy = PreviewProxy(per_devbox=2, queue_timeout=0.2)
    url = f"http://127.0.0.1:{endless_stream}/events"
    try:
        held = [await proxy.send("devbox_a", "GET", url, [], nothing()) for _ in range(2)]
        with pytest.raises(PreviewBusy, match="devbox_a has 2"):
            await proxy.send("devbox_a", "GET", url, [], nothing())
        other, close_other = await proxy.send("devbox_b", "GET", url, [], nothing())
        assert other.status_code == 200
        await close_other()
        _, close_first = held[0]
        await close_first()
        await close_first()  # closing twice frees one slot, not two
        again, close_again = await proxy.send("devbox_a", "GET", url, [], nothing())
        assert again.status_code == 200
        with pytest.raises(PreviewBusy):
            await proxy.send("devbox_a", "GET", url, [], nothing())
        await close_again()
        await held[1][1]()
    finally:
        await proxy.close()
