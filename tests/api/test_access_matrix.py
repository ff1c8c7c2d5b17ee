"""Every route of the app x every kind of caller -> the status the one policy promises.

The route list is derived from the app itself, and what each caller should get from the
policy table (`auth/policy.py`) and the action each route declares, so a new route is
covered without touching this file, and a route or service that answered otherwise than the
table says fails here. Runs without VMs: what is checked is who gets past the rules; actions
that would need a VM then answer 409, or 503 naming the missing VM backend, never 401/403.
Any other 5xx for a caller the rule lets through is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import Api, app_routes, background_settled, insert_devbox, mint_agent_token

from devbox_service.auth.guards import AccessGuard
from devbox_service.auth.models import Role
from devbox_service.auth.policy import POLICY, SNAPSHOT_ACTS, Relation
from devbox_service.auth.scopes import AgentScope
from devbox_service.devboxes.disk_resizes import DISK_RESIZES
from devbox_service.devboxes.models import (
    DiskResizeRecord,
    DiskResizeStatus,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.devboxes.snapshot_store import SNAPSHOTS

SINGLE_SCOPES = sorted(scope.value for scope in AgentScope)
CALLERS = [
    "none",
    "owner",
    "member",
    "org-admin",
    "outsider",
    "other-devbox-agent",
    "revoked-agent",
    *(f"agent:{s}" for s in SINGLE_SCOPES),
]
NO_VM_BACKEND = "this service runs without a VM backend (DEVBOX_VM_BACKEND=none)"
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
    "/ttl": {"json": {"ttl_seconds": 3600}},
}


@pytest.fixture
async def people(api: Api) -> dict[str, Any]:
    admin = await api.services.identities.authenticate(api.admin_key)
    return {
        "admin": admin,
        "member": await api.new_user("matrix-member", org="default", role=Role.MEMBER),
        "org-admin": await api.new_user("matrix-org-admin", org="default", role=Role.ADMIN),
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
            snapshot_id = await insert_snapshot(api, admin.user_id, admin.org_id, devbox_id)
            headers: dict[str, str] = {}
            if caller == "owner":
                headers = api.auth(api.admin_key)
            elif caller in ("member", "org-admin", "outsider"):
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

            def fill(
                match: re.Match[str], devbox_id: str = devbox_id, snapshot_id: str = snapshot_id
            ) -> str:
                name = match.group(1)
                if name in ("devbox_id", "operation_id", "snapshot_id"):
                    return {
                        "devbox_id": devbox_id,
                        "operation_id": f"op_{devbox_id}",
                        "snapshot_id": snapshot_id,
                    }[name]
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
            expected = expectation(caller, rule, method, template)
            if not expected(status, _detail(response)):
                failures.append(
                    f"{caller:32} {method:6} {template}: {status} {response.text[:120]}"
                )
    assert not failures, "\n".join(failures)


def _detail(response: httpx.Response) -> object:
    try:
        return response.json().get("detail")
    except (ValueError, AttributeError):  # a page, a stream, a JSON list
        return None


async def insert_snapshot(api: Api, owner_id: str, org_id: str, devbox_id: str) -> str:
    """A ready snapshot of the devbox (no VM files behind it), so snapshot routes have one."""
    snapshot_id = f"snapshot_{devbox_id}"
    async with api.services.database.transaction() as tx:
        await SNAPSHOTS.insert(
            tx,
            SnapshotRecord(
                id=snapshot_id,
                org_id=org_id,
                user_id=owner_id,
                devbox_id=devbox_id,
                name="matrix",
                kind=SnapshotKind.SAVE,
                status=SnapshotStatus.READY,
                vcpus=1,
                memory_mb=256,
                disk_mb=2048,
                created_at=0.0,
            ),
        )
    return snapshot_id


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


Expected = Callable[[int, object], bool]
"""Whether a response (its status, and its `detail` when JSON) is what the rule promises."""


def passed(status: int, detail: object) -> bool:
    """Past the guard, and no server error: the one 5xx allowed is the 503 of a service
    without a VM backend (this test's), for actions that need a VM."""
    if status in (401, 403):
        return False
    return status < 500 or (status == 503 and detail == NO_VM_BACKEND)


def only(*statuses: int) -> Expected:
    return lambda status, _: status in statuses


def expectation(caller: str, rule: AccessGuard, method: str, template: str) -> Expected:
    access = rule.access
    on_devbox = "{devbox_id" in template
    if template == "/sign-in":
        # the form (200) is anyone's; a post without the form's own token is refused (403)
        return only(200, 403)
    if access.public:
        return passed
    if access.page:
        # pages know only the session cookie: a bearer token (an agent's included) never
        # signs in; GET is sent to the sign-in form, a write refused (test_pages has more)
        return only(303, 401)
    if caller in ("none", "revoked-agent"):
        return only(401)
    if caller == "owner":
        return passed  # the owner here is the service's first user, an administrator
    if access.admin:
        return only(403)
    if caller in ("member", "org-admin", "outsider"):
        if access.act is None:  # about no one devbox or snapshot: any user key passes
            return passed
        if caller == "outsider":
            return only(404)
        standing = Relation.MEMBER if caller == "member" else Relation.ORG_ADMIN
        if standing in POLICY[access.act].who:
            return lambda status, detail: passed(status, detail) and status != 404
        return only(403)
    if caller == "other-devbox-agent":
        if access.agent_scope is None or on_devbox:
            return only(403)
        if access.act in SNAPSHOT_ACTS:
            return only(404)  # the snapshot of a devbox the token is not bound to
        return passed
    scope = caller.removeprefix("agent:")
    if access.agent_scope == scope:
        return passed
    return only(403)
