"""Server-sent event streams of the API: Litestar's `ServerSentEvent`, with the keep-alive
comments it does not send itself. A proxy or client with an idle timeout would otherwise
drop a stream that is quiet for long (a build step that prints nothing, a silent command)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

from litestar import Request
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse

KEEPALIVE_SECONDS = 15.0
NO_CACHE = {"Cache-Control": "no-store"}  # never stored by a cache along the way


def event_stream(
    request: Request[Any, Any, Any],
    messages: AsyncGenerator[ServerSentEventMessage, None],
    *,
    keepalive: float = KEEPALIVE_SECONDS,
) -> ASGIResponse:
    """The messages as `text/event-stream`, with a `: ping - <UTC time>` comment every
    `keepalive` seconds whatever else is sent. An ASGI response, so a handler may answer
    either this or another body."""
    stream = ServerSentEvent(with_keepalive(messages, keepalive), headers=NO_CACHE)
    return stream.to_asgi_response(None, request)


def ping() -> ServerSentEventMessage:
    """A comment alone: `data=None`, since Litestar's default (an empty data line) would be
    an empty message event to the client, not a comment it ignores."""
    return ServerSentEventMessage(data=None, comment=f"ping - {datetime.now(UTC)}")


async def with_keepalive(
    messages: AsyncGenerator[ServerSentEventMessage, None], every: float
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """`messages`, with a ping comment interleaved every `every` seconds. The source is read
    by a task of its own, so a ping never waits for a message and the source runs in one
    task throughout; closing the stream (a client gone) cancels it. A source that fails
    ends the stream with its error, as it would without pings."""
    queue: asyncio.Queue[ServerSentEventMessage | Exception | None] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async with contextlib.aclosing(messages):  # closed here, in its own task
                async for message in messages:
                    await queue.put(message)
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(None)

    reader = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + every
    getter: asyncio.Future[ServerSentEventMessage | Exception | None] | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(queue.get())
            await asyncio.wait({getter}, timeout=max(0.0, next_ping - loop.time()))
            if not getter.done():  # kept pending for the next turn: nothing is lost
                yield ping()
                next_ping = loop.time() + every
                continue
            item, getter = getter.result(), None
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        for task in (getter, reader):
            if task is not None:
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
