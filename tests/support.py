"""Test helpers shared by the API and VM tests (plain functions and classes, no fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.testing import AsyncTestClient

from devbox_service.app import create_app
from devbox_service.auth import tokens
from devbox_service.auth.guards import AccessGuard
from devbox_service.auth.models import AgentTokenRecord, Principal, PrincipalKind, Role
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventType
from devbox_service.devboxes.records import new_event
from devbox_service.ids import new_id
from devbox_service.services import Services
from devbox_service.settings import Settings, load_settings
from devbox_service.ssh.guest import GuestConnections

ApiClient = AsyncTestClient[Any]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
"""Static test data (sample files), kept apart from pytest fixtures."""


class Api:
    """A running app (real SQLite file, real HTTP through the test client) and its users."""

    def __init__(self, client: ApiClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.services: Services = client.app.state.services

    @property
    def admin_key(self) -> str:
        return (Path(self.settings.data_dir) / "admin.key").read_text().strip()

    async def new_user(self, name: str, *, org: str | None = None, role: Role = Role.MEMBER) -> str:
        """Create a user (in `org`, or their own) and return an API key for them."""
        await background_settled(self)  # this writes from the test's loop: see there
        await self.services.identities.create_user(name, org=org, role=role)
        issued = await self.services.identities.issue_key(name, org=org)
        return issued.key

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


READY_TIMEOUT = 240.0


async def wait_status(api: Api, key: str, devbox_id: str, wanted: str = "ready") -> dict[str, Any]:
    start = time.monotonic()
    while True:
        response = await api.client.get(f"/api/devboxes/{devbox_id}", headers=api.auth(key))
        body: dict[str, Any] = response.json()
        if response.status_code == 200 and body["status"] == wanted:
            return body
        assert wanted == "error" or body.get("status") != "error", body
        waited = time.monotonic() - start
        assert waited < READY_TIMEOUT, f"{devbox_id} never became {wanted}: {body}"
        await asyncio.sleep(0.02 if waited < 2 else 0.3)  # fast on the in-memory backend


guest_connections = GuestConnections()
"""The tests' own SSH connections into guests (one set per test session)."""


async def guest(api: Api, devbox_id: str, command: str) -> str:
    """Run a command inside the devbox over SSH (the test's own connection: the app under
    test runs on the test client's event loop, not this one)."""
    instance = await api.services.devbox_core.backend.get_instance(devbox_id)
    result = await guest_connections.run(instance.ssh, command)
    return str(result.stdout)


def principal(**overrides: Any) -> Principal:
    """A signed-in user (a member of org_1 by default) for rule tests that need no database."""
    fields: dict[str, Any] = {
        "kind": PrincipalKind.USER,
        "credential_id": "key_1",
        "user_id": "user_1",
        "user_name": "user_1",
        "org_id": "org_1",
        "role": Role.MEMBER,
    }
    fields.update(overrides)
    return Principal(**fields)


def devbox_record(**overrides: Any) -> DevboxRecord:
    """A ready devbox's record (fields overridable), for tests that need one without a VM."""
    now = time.time()
    values: dict[str, Any] = {
        "id": new_id("devbox"),
        "org_id": "org_1",
        "user_id": "user_1",
        "name": "",
        "status": DevboxStatus.READY,
        "base_snapshot_id": None,
        "current_save_id": None,
        "parent_id": None,
        "vcpus": 1,
        "memory_mb": 256,
        "disk_mb": 2048,
        "metadata": {},
        "error": None,
        "created_at": now,
        "updated_at": now,
        **overrides,
    }
    return DevboxRecord(**values)


async def background_settled(api: Api, timeout: float = 60.0) -> None:
    """Until the app's background work is done: the app runs in the test client's own event
    loop, and a test writing to the database from its loop meanwhile would contend with it
    across loops (asyncio locks are one loop's)."""
    deadline = time.monotonic() + timeout
    while api.services.devbox_core.busy:
        assert time.monotonic() < deadline, "background work never finished"
        await asyncio.sleep(0.01)


async def insert_devbox(api: Api, owner_id: str, org_id: str) -> str:
    """A devbox record with no VM behind it: for tests of rules, not of VMs."""
    record = devbox_record(
        org_id=org_id,
        user_id=owner_id,
        ssh_credentials_sealed=api.services.secret_box.seal(
            '{"access_token": "t", "password": "p"}'
        ),
    )
    event = new_event(record.id, EventType.CREATE)
    await background_settled(api)  # a write from the test's loop
    async with api.services.database.transaction() as tx:
        await api.services.devbox_core.store.insert(
            tx, record, event, ssh_token_hash=new_id("hash")
        )
    return record.id


async def mint_agent_token(
    api: Api,
    owner_id: str,
    org_id: str,
    devbox_id: str,
    granted: list[str],
    *,
    revoked: bool = False,
) -> str:
    secret = tokens.new_secret(tokens.AGENT_TOKEN_PREFIX)
    record = AgentTokenRecord(
        id=new_id("agenttoken"),
        user_id=owner_id,
        org_id=org_id,
        devbox_id=devbox_id,
        session_id=new_id("agentsession"),
        scopes=granted,
        secret_names=None,
        purpose="matrix",
        created_at=time.time(),
        last_used_at=None,
        revoked_at=None,
    )
    store = api.services.identities.agent_tokens
    await background_settled(api)  # a write from the test's loop
    await store.insert(record, tokens.hash_secret(secret))
    if revoked:
        await store.revoke(devbox_id, record.id)
    return secret


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


GENEROUS_LIMITS = {"limit_devboxes_per_user": 200, "limit_devboxes_per_org": 200}
"""VM tests share one user across many tests; the limits have tests of their own."""


def vm_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a service with real VMs in a test: its own data dir and a free SSH port,
    the shared image cache (the one the backend fixtures use)."""
    from vm_fixtures import CACHE_DIR

    values: dict[str, object] = {
        "data_dir": str(data_dir),
        "cache_dir": CACHE_DIR,
        "vm_backend": "qemu",
        "ssh_port": 0,
        **GENEROUS_LIMITS,
        **overrides,
    }
    return load_settings(environ={}, **values)


def app_routes(app: Litestar) -> list[tuple[str, str, list[AccessGuard]]]:
    """(method, path template, access rules) for every route of the app the project wrote
    (Litestar's own OPTIONS answers and its docs UI under /docs left out)."""
    found: list[tuple[str, str, list[AccessGuard]]] = []
    for route in app.routes:
        if route.path.startswith("/docs"):
            continue
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            rules = [g for g in handler.resolve_guards() if isinstance(g, AccessGuard)]
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((str(method), route.path, rules))
    return found


@contextlib.asynccontextmanager
async def vm_service(settings: Settings) -> AsyncIterator[Api]:
    """A running app with real VMs whose guest image is ready."""
    async with AsyncTestClient(create_app(settings), timeout=300) as client:
        await wait_ready(client, timeout=1800)
        yield Api(client, settings)


async def start_refusal(app: Litestar) -> str:
    """Why a service that must not start refused to (its lifespan's error, as text)."""
    try:
        async with AsyncTestClient(app):
            pass
    except BaseException as exc:  # the lifespan's exception group
        return repr(exc) + "".join(repr(e) for e in getattr(exc, "exceptions", ()))
    raise AssertionError("the service started")


async def wait_ready(client: ApiClient, timeout: float = 30) -> None:
    """Until `/health/ready` answers 200 (the guest image is ready)."""
    deadline = time.monotonic() + timeout
    while (await client.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, "guest image never became ready"
        await asyncio.sleep(0.05)


async def create_devbox(api: Api, snapshot_id: str, **body: Any) -> dict[str, Any]:
    """Create a devbox as the admin through the API and wait until it is ready."""
    response = await api.client.post(
        "/api/devboxes",
        params={"snapshot_id": snapshot_id},
        json=body,
        headers=api.auth(api.admin_key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "provisioning"
    return await wait_status(api, api.admin_key, response.json()["id"])


def operator_cli(data_dir: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`devbox-service ARGS` as an operator runs it on a data dir, in its own process (extra
    `DEVBOX_*` settings by name, e.g. `VM_BACKEND="none"`); its output, exit code not checked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_")}
    env |= {"DEVBOX_DATA_DIR": str(data_dir)}
    env |= {f"DEVBOX_{name}": value for name, value in settings.items()}
    return subprocess.run(
        [sys.executable, "-m", "devbox_service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
