"""The API's SSE streams: sse-starlette's wire format (data lines, `: ping - <time>` comments
on a timer, no-store), now on Litestar's `ServerSentEvent`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from litestar import Litestar, Request, get
from litestar.response import ServerSentEventMessage
from litestar.testing import AsyncTestClient
from litestar.types import ASGIApp

from devbox_service.event_streams import event_stream, with_keepalive

PING = re.compile(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\r\n\r\n")


async def slow_pair(gap: float) -> AsyncGenerator[ServerSentEventMessage, None]:
    yield ServerSentEventMessage(data='{"a": 1}')
    await asyncio.sleep(gap)
    yield ServerSentEventMessage(data="[DONE]")


async def test_the_wire_format_is_data_lines_pings_and_no_store() -> None:
    @get("/stream")
    async def stream(request: Request[Any, Any, Any]) -> ASGIApp:
        return event_stream(request, slow_pair(0.5), keepalive=0.1)

    async with AsyncTestClient(Litestar([stream])) as client:
        answer = await client.get("/stream")
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-accel-buffering"] == "no"
    body = answer.content
    assert body.startswith(b'data: {"a": 1}\r\n\r\n') and body.endswith(b"data: [DONE]\r\n\r\n")
    pings = PING.findall(body)
    assert pings, body  # counted, not timed: at least one ping fills the quiet half second
    assert PING.sub(b"", body) == b'data: {"a": 1}\r\n\r\ndata: [DONE]\r\n\r\n'


async def test_messages_keep_their_order_and_none_is_lost_to_a_ping() -> None:
    async def many() -> AsyncGenerator[ServerSentEventMessage, None]:
        for i in range(50):
            if i % 10 == 0:
                await asyncio.sleep(0.02)
            yield ServerSentEventMessage(data=str(i))

    seen = [m async for m in with_keepalive(many(), 0.005)]
    data = [m.data for m in seen if m.comment is None]
    assert data == [str(i) for i in range(50)]
    assert all(str(m.comment).startswith("ping - ") for m in seen if m.comment is not None)


async def test_a_failing_source_ends_the_stream_with_its_error() -> None:
    async def failing() -> AsyncGenerator[ServerSentEventMessage, None]:
        yield ServerSentEventMessage(data="one")
        raise RuntimeError("the source broke")

    seen = []
    with pytest.raises(RuntimeError, match="the source broke"):
        async for message in with_keepalive(failing(), 10):
            seen.append(message.data)
    assert seen == ["one"]


async def test_closing_the_stream_stops_the_source() -> None:
    stopped = asyncio.Event()

    async def endless() -> AsyncGenerator[ServerSentEventMessage, None]:
        try:
            while True:
                yield ServerSentEventMessage(data="tick")
                await asyncio.sleep(0)
        finally:
            stopped.set()

    stream = with_keepalive(endless(), 10)
    assert (await anext(stream)).data == "tick"
    await stream.aclose()  # what a client going away does
    await asyncio.wait_for(stopped.wait(), 5)
