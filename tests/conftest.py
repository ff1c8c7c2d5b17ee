"""Shared fixtures. Backend-level VM fixtures (built -> booted -> saved) live in
vm_fixtures.py; the API-level ones (a running service with real VMs, a ready devbox) here."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support import Api, create_devbox, vm_service, vm_settings, wait_ready

from devbox_service.app import create_app
from devbox_service.backends.memory import MemoryBackend
from devbox_service.db.local_cluster import PostgresServer, running_postgres
from devbox_service.settings import Settings, load_settings

pytest_plugins = ["vm_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def no_vm_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A last line of defence: end any QEMU process started under this session's temp dir
    (a failed test may skip its own clean-up, and VMs outlive the service by design)."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"qemu-system-x86_64") and base.encode() in b" ".join(args):
            with contextlib.suppress(OSError):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


STORE_UNDER_TEST = os.environ.get("PYTEST_DEVBOX_STORE", "sqlite")
"""`postgres` runs every service a test starts on a fresh PostgreSQL database instead of
SQLite (`PYTEST_DEVBOX_STORE=postgres pytest tests/api`); the tests that name a store run on
both whatever this says."""


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": str(tmp_path / "data"), "vm_backend": "none"}
        if STORE_UNDER_TEST == "postgres" and not request.node.get_closest_marker("sqlite_only"):
            server: PostgresServer = request.getfixturevalue("postgres")
            values["database_url"] = server.new_database()
        values.update(overrides)
        return load_settings(environ={}, **values)

    return make


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    settings = make_settings()
    async with AsyncTestClient(create_app(settings)) as client:
        yield Api(client, settings)


@pytest.fixture
async def fake_backend() -> MemoryBackend:
    """The in-memory VM backend with its default image: for fast tests of the rules."""
    backend = MemoryBackend()
    await backend.start()
    await backend.ensure_image()
    return backend


@pytest.fixture
async def fake_api(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> AsyncIterator[Api]:
    """The whole service (real SQLite file, real HTTP, real SSH gateway listener) on the
    in-memory VM backend."""
    settings = make_settings(vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        yield Api(client, settings)


@pytest.fixture(scope="session")
async def vm_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    data_dir = tmp_path_factory.mktemp("api-data")
    async with vm_service(vm_settings(data_dir)) as api:
        yield api
        # VMs outlive the service by design; a test session must not leave any behind.
        auth = api.auth(api.admin_key)
        for devbox in (await api.client.get("/api/devboxes", headers=auth)).json()["data"]:
            await api.client.delete(f"/api/devboxes/{devbox['id']}", headers=auth)


@pytest.fixture(scope="session")
async def default_image(vm_api: Api) -> dict[str, Any]:
    images = (await vm_api.client.get("/api/images", headers=vm_api.auth(vm_api.admin_key))).json()
    return next(i for i in images["data"] if i["default"])


@pytest.fixture(scope="session")
async def devbox(vm_api: Api, default_image: dict[str, Any]) -> dict[str, Any]:
    """One ready devbox shared by the tests that do not need a fresh one."""
    return await create_devbox(
        vm_api, default_image["id"], name="shared", metadata={"purpose": "tests"}
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each test asks it for a database of its own."""
    with running_postgres() as server:
        yield server
