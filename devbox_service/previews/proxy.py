"""Forwarding for the preview URL `{base_url}/preview/{devbox_id}/{name}/...`: one HTTP client
that sends a request to the guest port's loopback forward and hands back the unread answer,
and the header rules of a reverse proxy. The route itself is in `routes.py`.

WebSockets go through `websocket.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import httpx

from devbox_service.auth.web_sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from devbox_service.backends.base import PortForward

PREVIEW_PREFIX = "/preview"

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1: meant for one connection, never forwarded (plus what `Connection` names).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the proxy itself (httpx fills in host and content-length from what it sends).
REPLACED = frozenset(
    {
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
    }
)


class UpstreamUnreachable(Exception):
    """Nothing answered HTTP on the guest port (connection refused, reset or timed out)."""


class PreviewBusy(Exception):
    """A devbox already has as many preview requests in flight as it may."""


class PreviewProxy:
    """One HTTP client for every preview request (connections pooled per guest port), with
    at most `per_devbox` requests in flight per devbox: one tenant's slow or endless streams
    hold its own slots, never the others'."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 300.0,
        per_devbox: int = 32,
        queue_timeout: float = 10.0,
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # never through an HTTP(S)_PROXY from the environment
        )
        self.per_devbox = per_devbox
        self._queue_timeout = queue_timeout
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def send(
        self,
        devbox_id: str,
        method: str,
        url: str,
        headers: Headers,
        body: AsyncIterable[bytes],
    ) -> tuple[httpx.Response, Callable[[], Awaitable[None]]]:
        """The upstream answer with its body still unread (the request body streams through
        as it arrives), and the close to call once it is relayed: it frees the slot."""
        slots = await self._acquire(devbox_id)
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            upstream = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            slots.release()
            raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except BaseException:
            slots.release()
            raise

        released = False

        async def close() -> None:
            """Idempotent: called when the relay ends and again after the response."""
            nonlocal released
            if released:
                return
            released = True
            try:
                await upstream.aclose()
            finally:
                slots.release()

        return upstream, close

    async def _acquire(self, devbox_id: str) -> asyncio.Semaphore:
        slots = self._slots.setdefault(devbox_id, asyncio.Semaphore(self.per_devbox))
        try:
            await asyncio.wait_for(slots.acquire(), self._queue_timeout)
        except TimeoutError as exc:
            raise PreviewBusy(
                f"devbox {devbox_id} has {self.per_devbox} preview requests in flight"
            ) from exc
        return slots

    @contextlib.asynccontextmanager
    async def slot(self, devbox_id: str) -> AsyncIterator[None]:
        """One of the devbox's slots for as long as a WebSocket stays open."""
        slots = await self._acquire(devbox_id)
        try:
            yield
        finally:
            slots.release()

    async def close(self) -> None:
        await self._client.aclose()


def without_hop_by_hop(headers: Headers, drop: frozenset[str] = frozenset()) -> Headers:
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    excluded = HOP_BY_HOP | drop | named
    return [(n, v) for n, v in headers if n.decode("latin-1").lower() not in excluded]


def bearer_of(headers: Headers) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


SERVICE_COOKIES = frozenset({SESSION_COOKIE, SIGN_IN_COOKIE})
"""The dashboard's own cookies: a guest never sees them, whatever origin asked."""


def request_headers(headers: Headers, *, forwarded: dict[str, str]) -> Headers:
    """What goes upstream: the client's headers minus hop-by-hop ones, minus the caller's
    credentials (`Authorization`, whether the preview checked it or not, and the dashboard's
    cookies), plus `X-Forwarded-*`. The guest is not trusted with who its visitors are."""
    kept = without_hop_by_hop(headers, frozenset(REPLACED | {"authorization"}))
    cleaned: Headers = []
    for name, value in kept:
        if name.lower() == b"cookie":
            value = _without_service_cookies(value)
            if not value:
                continue
        cleaned.append((name, value))
    return cleaned + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in forwarded.items()]


def _without_service_cookies(header: bytes) -> bytes:
    pairs = [p.strip() for p in header.split(b";")]
    kept = [p for p in pairs if p and p.split(b"=", 1)[0].decode("latin-1") not in SERVICE_COOKIES]
    return b"; ".join(kept)


def response_headers(
    upstream: httpx.Response, prefix: str, guest: PortForward
) -> list[tuple[str, str]]:
    """What goes back: repeated headers (Set-Cookie) kept, scoped to this service; redirects
    kept inside the preview; no `Service-Worker-Allowed` (a service worker could then take
    over paths beyond the service's own). `prefix` is "" on the service's own origin."""
    kept = [
        (n.decode("latin-1"), v.decode("latin-1"))
        for n, v in without_hop_by_hop(list(upstream.headers.raw), DROPPED_RESPONSE)
    ]
    fixed = []
    for name, value in kept:
        lower = name.lower()
        if lower == "location":
            value = location(value, prefix, guest)
        elif lower == "set-cookie":
            value = scoped_cookie(value, prefix)
        fixed.append((name, value))
    return fixed


DROPPED_RESPONSE = frozenset({"service-worker-allowed"})


def scoped_cookie(value: str, prefix: str) -> str:
    """A guest's cookie, kept to the service: no `Domain` (it could reach other services'
    hosts), and under the path-based fallback its `Path` moved under the service's prefix."""
    parts = [p.strip() for p in value.split(";")]
    attributes = [p for p in parts[1:] if p and not p.lower().startswith("domain=")]
    path = next((p.split("=", 1)[1] for p in attributes if p.lower().startswith("path=")), "/")
    attributes = [p for p in attributes if not p.lower().startswith("path=")]
    scoped_path = prefix + (path if path.startswith("/") else "/" + path) if prefix else path
    return "; ".join([parts[0], *attributes, f"Path={scoped_path}"])


def location(value: str, prefix: str, guest: PortForward) -> str:
    """A redirect to the guest's own address (as the proxy reached it) kept in the preview."""
    origins = {f"http://{guest.authority}", f"http://localhost:{guest.port}"}
    for origin in sorted(origins):
        if value == origin or value.startswith(origin + "/"):
            value = value[len(origin) :] or "/"
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    return value
