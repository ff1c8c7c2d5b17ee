"""Every route of the app declares exactly one access rule (derived from the app itself)."""

from __future__ import annotations

from collections.abc import Callable

from support import app_routes

from devbox_service.app import create_app
from devbox_service.auth.guards import AccessGuard
from devbox_service.settings import Settings


def test_every_route_has_exactly_one_access_rule(make_settings: Callable[..., Settings]) -> None:
    routes = app_routes(create_app(make_settings()))
    assert len(routes) > 30
    undeclared = [
        f"{method} {path}: {len(rules)} rules" for method, path, rules in routes if len(rules) != 1
    ]
    assert not undeclared, undeclared


def test_handlers_name_services_not_the_container(make_settings: Callable[..., Settings]) -> None:
    """Each handler names the services it calls, never the whole container; and a public
    route's handler never names `principal` (it would get the anonymous visitor)."""
    app = create_app(make_settings())
    provided = set(app.dependencies) - {"principal"}
    assert "services" not in provided
    public_with_principal, unknown = [], []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            names = set(handler.parsed_fn_signature.parameters)
            rules = [g for g in handler.resolve_guards() if isinstance(g, AccessGuard)]
            if any(r.access.public for r in rules) and "principal" in names:
                public_with_principal.append(f"{route.path} {handler.handler_name}")
            unknown += [f"{route.path}: {n}" for n in names if n == "services"]
    assert not public_with_principal, public_with_principal
    assert not unknown, unknown
