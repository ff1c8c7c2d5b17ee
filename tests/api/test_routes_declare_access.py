"""Every route of the app declares exactly one access rule (derived from the app itself)."""

from __future__ import annotations

from collections.abc import Callable

from litestar.handlers import HTTPRouteHandler

from devbox_service.app import create_app
from devbox_service.auth.guards import AccessGuard
from devbox_service.settings import Settings


def test_every_route_has_exactly_one_access_rule(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    undeclared = []
    checked = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or handler.http_methods == {"OPTIONS"}:
                continue  # Litestar answers OPTIONS itself
            if handler.owner is not None and type(handler.owner).__name__ == "OpenAPIController":
                continue  # Litestar's own docs UI
            if route.path.startswith("/docs"):
                continue
            rules = [g for g in handler.resolve_guards() if isinstance(g, AccessGuard)]
            checked += 1
            if len(rules) != 1:
                undeclared.append(
                    f"{sorted(handler.http_methods)} {route.path}: {len(rules)} rules"
                )
    assert checked > 3
    assert not undeclared, undeclared
