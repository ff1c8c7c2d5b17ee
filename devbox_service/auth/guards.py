"""Who may call each route, declared once per route as a guard.

Every handler carries exactly one `allow(...)` guard. The guard authenticates the bearer,
applies the route's rule, and leaves the principal in the connection's scope for handlers
(through the `principal` dependency) and for the request log. A test walks every route of
the app and fails if one has no rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from litestar.di import NamedDependency

from devbox_service.auth.models import Principal, PrincipalKind, Role
from devbox_service.auth.policy import DEVBOX_ACTS, POLICY, SNAPSHOT_ACTS, Act
from devbox_service.auth.scopes import AgentScope
from devbox_service.auth.web_sessions import SESSION_COOKIE, WebSessions, check_csrf
from devbox_service.errors import NotAuthenticated, PermissionDenied

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import Scope

    from devbox_service.auth.service import IdentityService


class GuardedDevboxes(Protocol):
    """What the guard asks of the devboxes: may this caller do this to one, and note it."""

    async def visible(self, principal: Principal, devbox_id: str, act: Act) -> object: ...

    async def touch(self, devbox_id: str) -> None: ...


class GuardServices(Protocol):
    """The parts of the running service the guard uses (the app state's `services`)."""

    @property
    def identities(self) -> IdentityService: ...

    @property
    def devboxes(self) -> GuardedDevboxes: ...

    @property
    def web_sessions(self) -> WebSessions: ...


PRINCIPAL_KEY = "devbox_service.principal"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

ANONYMOUS = Principal(
    kind=PrincipalKind.ANONYMOUS,
    credential_id="",
    user_id="",
    user_name="",
    org_id="",
    role=Role.MEMBER,
)
"""Who calls a public route: it stands in the scope so that dependencies resolve alike
everywhere; handlers of public routes never name `principal`, and no service sees it."""

CurrentPrincipal = NamedDependency[Principal]
"""Handler parameter `principal: CurrentPrincipal`: the caller the route's guard admitted."""


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """A route's rule.

    public: anyone, no token needed.
    page: a dashboard page: the signed-in user of the session cookie (never a bearer
    token, so agent tokens never reach it), and the session's CSRF token on every write.
    admin: only service administrators' user keys.
    act: what the route does to the devbox (or snapshot) in its path; the one policy table
    (`auth/policy.py`) says who may, and which scope an agent token of that devbox needs.
    The devbox front door decides, with the same table, before a body is read.
    scope: for a route about no one devbox (secrets, say): agent tokens holding it may call.
    Otherwise any user API key may call it (the services answer 404 for resources outside
    the caller's organization).
    """

    public: bool = False
    page: bool = False
    admin: bool = False
    act: Act | None = None
    scope: AgentScope | None = None

    @property
    def agent_scope(self) -> AgentScope | None:
        return POLICY[self.act].scope if self.act is not None else self.scope


PUBLIC = Access(public=True)
PAGE = Access(page=True)
USER = Access()
ADMIN = Access(admin=True)


def agent_scope(scope: AgentScope) -> Access:
    return Access(scope=scope)


def on_devbox(act: Act) -> Access:
    """A route about the devbox in its path that does `act` to it."""
    assert act in DEVBOX_ACTS, act
    return Access(act=act)


def on_snapshot(act: Act) -> Access:
    """A route about the snapshot in its path (its service asks the policy)."""
    assert act in SNAPSHOT_ACTS, act
    return Access(act=act)


class AccessGuard:
    def __init__(self, access: Access) -> None:
        self.access = access

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        if self.access.public:
            connection.scope.setdefault("state", {})[PRINCIPAL_KEY] = ANONYMOUS
            return
        services: GuardServices = connection.app.state.services
        method = str(connection.scope.get("method", "GET"))  # a WebSocket has none
        devbox_id = connection.path_params.get("devbox_id")
        if self.access.page:
            principal = await signed_in(connection)
            if method not in SAFE_METHODS:
                await _check_form_token(connection)
            connection.scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
            await self._devbox_visible(services, principal, devbox_id, method, Act.VIEW)
            return
        principal = await services.identities.authenticate(bearer_token(connection))
        connection.scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        if principal.kind is not PrincipalKind.AGENT:
            check(self.access, principal, devbox_id)
            await self._devbox_visible(services, principal, devbox_id, method, self.access.act)
            return
        route = connection.scope.get("path_template", connection.url.path)
        try:
            check(self.access, principal, devbox_id)
        except PermissionDenied as refusal:
            await services.identities.agent_tokens.audit(
                principal, method=method, route=route, allowed=False, reason=refusal.message
            )
            raise
        await services.identities.agent_tokens.audit(
            principal,
            method=method,
            route=route,
            allowed=True,
            reason=self.access.agent_scope or "",
        )
        await self._devbox_visible(services, principal, devbox_id, method, self.access.act)

    @staticmethod
    async def _devbox_visible(
        services: GuardServices,
        principal: Principal,
        devbox_id: str | None,
        method: str,
        act: Act | None,
    ) -> None:
        """A route about a devbox is refused (404 for one the caller may not see, 403 for an
        act the policy keeps from them) before its body is read: an upload by a member is
        refused, not buffered first. Requests without a body are decided by the service they
        call, as every other request is. An action (not a read: a dashboard watching keeps
        nothing alive) restarts the TTL."""
        if devbox_id is not None and method not in SAFE_METHODS:
            await services.devboxes.visible(principal, devbox_id, act or Act.VIEW)
            await services.devboxes.touch(devbox_id)  # an action restarts its TTL


def check(access: Access, principal: Principal, devbox_id: str | None) -> None:
    """Apply a route's rule to an authenticated principal (pure; unit-tested directly)."""
    if principal.kind is PrincipalKind.AGENT:
        scope = access.agent_scope
        if scope is None or access.admin:
            raise PermissionDenied("Agent tokens cannot call this route; use a user API key")
        if scope not in principal.scopes:
            raise PermissionDenied(f"Insufficient scope: this route requires '{scope}'")
        if devbox_id is not None and devbox_id != principal.devbox_id:
            raise PermissionDenied("Token is scoped to a different devbox")
        return
    if access.admin and not principal.is_admin:
        raise PermissionDenied("this route is for service administrators")


def allow(access: Access) -> AccessGuard:
    return AccessGuard(access)


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The `Authorization: Bearer` token, None without one; NotAuthenticated if malformed."""
    header = next(  # the raw headers: building a Headers object costs more than the scan
        (v.decode("latin-1") for k, v in connection.scope["headers"] if k == b"authorization"),
        "",
    )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        if header:
            raise NotAuthenticated("malformed Authorization header: use 'Bearer <key>'")
        return None
    return value.strip()


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The dashboard user of the connection's session cookie; SignInRequired without one."""
    services: GuardServices = connection.app.state.services
    sessions = services.web_sessions
    return await sessions.principal(connection.cookies.get(SESSION_COOKIE))


async def _check_form_token(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A write from a page carries the session's CSRF token: in the `X-CSRF-Token` header
    (scripts) or the `csrf_token` field (forms)."""
    token = connection.headers.get("x-csrf-token")
    if token is None and hasattr(connection, "form"):
        token = (await connection.form()).get("csrf_token")
    check_csrf(connection.cookies.get(SESSION_COOKIE), token if isinstance(token, str) else None)


def current_principal(scope: Scope) -> Principal:
    """Dependency: the principal the route's guard admitted (the anonymous one on a public
    route, whose handlers never name it: a test checks)."""
    principal = scope.get("state", {}).get(PRINCIPAL_KEY)
    if principal is None:
        raise NotAuthenticated("this route did not authenticate its caller")
    assert isinstance(principal, Principal)
    return principal


def principal_of_scope(scope: Any) -> Principal | None:
    """The caller a guard admitted; None before a guard ran and for an anonymous visitor."""
    principal = scope.get("state", {}).get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal) or principal.kind is PrincipalKind.ANONYMOUS:
        return None
    return principal
