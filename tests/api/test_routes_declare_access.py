"""Every route of the app declares exactly one access rule (derived from the app itself)."""

from __future__ import annotations

from collections.abc import Callable

from support import app_routes

from devbox_service.app import create_app
from devbox_service.settings import Settings


def test_every_route_has_exactly_one_access_rule(make_settings: Callable[..., Settings]) -> None:
    routes = app_routes(create_app(make_settings()))
    assert len(routes) > 30
    undeclared = [
        f"{method} {path}: {len(rules)} rules" for method, path, rules in routes if len(rules) != 1
    ]
    assert not undeclared, undeclared
