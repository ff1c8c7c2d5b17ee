"""Each exposed service on its own origin: `http://{name}-{devbox_id}.{domain}:{port}/`.

An ASGI middleware turns a request for such a host into the path-based preview route
(`/preview/{devbox_id}/{name}/...`, which stays as a fallback), marking it so the proxy knows
the service owns the whole origin: no prefix on redirects, its cookies are its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from litestar.types import ASGIApp, Receive, Scope, Send

from devbox_service.previews.proxy import PREVIEW_PREFIX

ORIGIN_KEY = "preview_origin"
"""Set in a request's scope state when it came in on a service's own host."""

_LABEL = re.compile(r"^(?P<name>[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)-(?P<devbox>devbox_[a-f0-9]+)$")


def origin_host(name: str, devbox_id: str, domain: str) -> str:
    return f"{name}-{devbox_id}.{domain}"


def parse_host(host: str, domain: str) -> tuple[str, str] | None:
    """(devbox id, service name) when `host` is a service's own origin under `domain`."""
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    label, dot, rest = hostname.lower().partition(".")
    if not dot or rest != domain.lower():
        return None
    match = _LABEL.match(label)
    return (match["devbox"], match["name"]) if match else None


def origin_url(base_url: str, domain: str) -> Callable[[str, str], str]:
    """The URL of a service's own origin, on the API's scheme and port."""
    scheme, _, rest = base_url.partition("://")
    hostport = rest.split("/", 1)[0]
    port = hostport.rsplit(":", 1)[1] if ":" in hostport and not hostport.endswith("]") else ""
    suffix = f":{port}" if port else ""
    return lambda devbox_id, name: f"{scheme}://{origin_host(name, devbox_id, domain)}{suffix}/"


def preview_origin_middleware(domain: str) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware bound to the preview domain."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
                found = parse_host(host, domain)
                if found is not None:
                    devbox_id, name = found
                    prefix = f"{PREVIEW_PREFIX}/{devbox_id}/{name}"
                    raw = scope.get("raw_path") or scope["path"].encode()
                    scope = {  # type: ignore[assignment]
                        **scope,
                        "path": prefix + scope["path"],
                        "raw_path": prefix.encode() + raw,
                        "state": {**scope.get("state", {}), ORIGIN_KEY: True},
                    }
            await app(scope, receive, send)

        return route

    return middleware
