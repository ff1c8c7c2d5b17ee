"""Forwarding for the preview URL `{base_url}/preview/{devbox_id}/{name}/...`: one HTTP client
that sends a request to the guest port's loopback forward and hands back the unread answer,
and the header rules of a reverse proxy. The route itself is in `routes.py`.

Plain HTTP only: no WebSocket upgrades.
"""

from __future__ import annotations

import httpx

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


class PreviewProxy:
    """One HTTP client for every preview request (connections pooled per guest port)."""

    def __init__(self, *, connect_timeout: float = 10.0, timeout: float = 300.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,  # never through an HTTP(S)_PROXY from the environment
        )

    async def send(self, method: str, url: str, headers: Headers, body: bytes) -> httpx.Response:
        """The upstream answer with its body still unread: the caller streams and closes it."""
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

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


def request_headers(
    headers: Headers, *, drop_authorization: bool, forwarded: dict[str, str]
) -> Headers:
    """What goes upstream: the client's headers minus hop-by-hop ones (and minus the bearer
    key when the preview itself consumed it), plus `X-Forwarded-*`."""
    drop = REPLACED | ({"authorization"} if drop_authorization else frozenset())
    kept = without_hop_by_hop(headers, frozenset(drop))
    return kept + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in forwarded.items()]


def response_headers(
    upstream: httpx.Response, prefix: str, host_port: int
) -> list[tuple[str, str]]:
    """What goes back: repeated headers (Set-Cookie) kept; redirects kept inside the preview."""
    kept = [
        (n.decode("latin-1"), v.decode("latin-1"))
        for n, v in without_hop_by_hop(list(upstream.headers.raw))
    ]
    return [(n, location(v, prefix, host_port) if n.lower() == "location" else v) for n, v in kept]


def location(value: str, prefix: str, host_port: int) -> str:
    for origin in (f"http://127.0.0.1:{host_port}", f"http://localhost:{host_port}"):
        if value == origin or value.startswith(origin + "/"):
            value = value[len(origin) :] or "/"
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    return value
