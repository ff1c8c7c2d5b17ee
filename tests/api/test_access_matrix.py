"""Every route of the app x every kind of caller -> the status the access rules promise.

The route list is derived from the app itself, so a new route is covered (and must declare
its rule) without touching this file. Runs without VMs: what is checked here is who gets
past the guard; actions that would need a VM then answer 409/503, never 401/403.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support import Api, app_routes, background_settled, insert_devbox, mint_agent_token

from devbox_service.auth.guards import AccessGuard
from devbox_service.auth.models import Role
from devbox_service.auth.scopes import AgentScope
from devbox_service.devboxes.disk_resizes import DISK_RESIZES
from devbox_service.devboxes.models import DiskResizeRecord, DiskResizeStatus

SINGLE_SCOPES = sorted(scope.value for scope in AgentScope)
CALLERS = [
    "none",
    "owner",
    "member",
    "outsider",
    "other-devbox-agent",
    "revoked-agent",
    *(f"agent:{s}" for s in SINGLE_SCOPES),
]
PLACEHOLDER_VALUES = {"name": "SOME_SECRET", "target": "main", "pane_id": "%0"}
# Valid bodies where a route needs one, so that what is checked is the access rule alone.
BODIES: dict[str, dict[str, Any]] = {
    "/display_name": {"json": {"display_name": "x"}},
    "/http": {"json": {"name": "web", "port": 8080}},
    "/notifications": {"json": {"title": "t"}},
    "/uploads": {"files": {"file": ("a.txt", b"a", "text/plain")}},
    "/uploads/image": {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}},
    "/api/user-secrets/{name:str}": {"json": {"value": "v"}},
    "/send-keys": {"json": {"keys": "x", "pane_id": "%0"}},
    "/rename": {"json": {"new_name": "renamed"}},
    "/tmux/sessions": {"json": {"name": "s"}},
    "/wait": {"json": {"idle_ms": 10, "timeout_ms": 10}},
}


@pytest.fixture
async def people(api: Api) -> dict[str, Any]:
    admin = await api.services.identities.authenticate(api.admin_key)
    return {
        "admin": admin,
        "member": await api.new_user("matrix-member", org="default", role=Role.MEMBER),
        "outsider": await api.new_user("matrix-outsider"),
    }


async def test_every_route_answers_every_caller_as_its_rule_says(
    api: Api, people: dict[str, Any]
) -> None:
    admin = people["admin"]
    routes = [(m, path, rule) for m, path, (rule,) in app_routes(api.client.app)]
    assert len(routes) > 30
    failures = []
    for method, template, rule in routes:
        for caller in CALLERS:
            devbox_id = await insert_devbox(api, admin.user_id, admin.org_id)
            await insert_disk_resize(api, devbox_id)
            headers: dict[str, str] = {}
            if caller == "owner":
                headers = api.auth(api.admin_key)
            elif caller in ("member", "outsider"):
                headers = api.auth(people[caller])
            elif caller == "other-devbox-agent":
                other = await insert_devbox(api, admin.user_id, admin.org_id)
                headers = api.auth(
                    await mint_agent_token(api, admin.user_id, admin.org_id, other, SINGLE_SCOPES)
                )
            elif caller == "revoked-agent":
                headers = api.auth(
                    await mint_agent_token(
                        api, admin.user_id, admin.org_id, devbox_id, SINGLE_SCOPES, revoked=True
                    )
                )
            elif caller.startswith("agent:"):
                headers = api.auth(
                    await mint_agent_token(
                        api, admin.user_id, admin.org_id, devbox_id, [caller.removeprefix("agent:")]
                    )
                )

            def fill(match: re.Match[str], devbox_id: str = devbox_id) -> str:
                name = match.group(1)
                if name in ("devbox_id", "operation_id"):
                    return devbox_id if name == "devbox_id" else f"op_{devbox_id}"
                return PLACEHOLDER_VALUES.get(name, "x")

            path = re.sub(r"\{(\w+)(?::\w+)?\}", fill, template)
            body = next((b for suffix, b in BODIES.items() if template.endswith(suffix)), None)
            if method in ("GET", "DELETE"):
                body = {}
            response = await api.client.request(
                method,
                path,
                headers=headers,
                follow_redirects=False,
                **(body if body is not None else {"json": {}}),
            )
            await background_settled(api)
            status = response.status_code
            expected = expectation(caller, rule, template)
            if not expected(status):
                failures.append(
                    f"{caller:32} {method:6} {template}: {status} {response.text[:120]}"
                )
    assert not failures, "\n".join(failures)


async def insert_disk_resize(api: Api, devbox_id: str) -> None:
    """A finished disk resize of the devbox, so its status route has something to show."""
    async with api.services.database.transaction() as tx:
        await DISK_RESIZES.insert(
            tx,
            DiskResizeRecord(
                id=f"op_{devbox_id}",
                devbox_id=devbox_id,
                idempotency_key="matrix",
                previous_mb=2048,
                requested_mb=2048,
                status=DiskResizeStatus.SUCCEEDED,
                capacity_generation=0,
                created_at=0.0,
                updated_at=0.0,
            ),
        )


def expectation(caller: str, rule: AccessGuard, template: str) -> Any:
    access = rule.access
    on_devbox = "{devbox_id" in template
    passed = lambda status: status not in (401, 403)  # noqa: E731
    if template == "/sign-in":
        # the form (200) is anyone's; a post without the form's own token is refused (403)
        return lambda status: status in (200, 403)
    if access.public:
        return passed
    if access.page:
        # pages know only the session cookie: a bearer token (an agent's included) never
        # signs in; GET is sent to the sign-in form, a write refused (test_pages has more)
        return lambda status: status in (303, 401)
    if caller in ("none", "revoked-agent"):
        return lambda status: status == 401
    if caller == "owner":
        return passed  # the owner here is the service's first user, an administrator
    if access.admin:
        return lambda status: status == 403
    if caller == "member":
        # members see and use the org's devboxes; some actions are the owner's alone (403)
        return lambda status: status not in (401, 404) or not on_devbox
    if caller == "outsider":
        return (lambda status: status == 404) if on_devbox else passed
    if caller == "other-devbox-agent":
        if access.scope is None or on_devbox:
            return lambda status: status == 403
        return passed
    scope = caller.removeprefix("agent:")
    if access.scope == scope:
        return passed
    return lambda status: status == 403
