"""Shared fixtures. Backend-level VM fixtures (built -> booted -> saved) live in
vm_fixtures.py; the API-level ones (a running service with real VMs, a ready devbox) here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support import Api, wait_status

from devbox_service.app import create_app
from devbox_service.settings import Settings, load_settings

pytest_plugins = ["vm_fixtures"]


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": str(tmp_path / "data"), "vm_backend": "none"}
        values.update(overrides)
        return load_settings(environ={}, **values)

    return make


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    settings = make_settings()
    async with AsyncTestClient(create_app(settings)) as client:
        yield Api(client, settings)


@pytest.fixture(scope="session")
async def vm_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    data_dir = tmp_path_factory.mktemp("api-data")
    settings = load_settings(environ={}, data_dir=str(data_dir), vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings), timeout=300) as client:
        api = Api(client, settings)
        deadline = time.monotonic() + 1800
        while (await client.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "guest image never became ready"
            await asyncio.sleep(1)
        yield api


@pytest.fixture(scope="session")
async def default_image(vm_api: Api) -> dict[str, Any]:
    images = (await vm_api.client.get("/api/images", headers=vm_api.auth(vm_api.admin_key))).json()
    return next(i for i in images["data"] if i["default"])


@pytest.fixture(scope="session")
async def devbox(vm_api: Api, default_image: dict[str, Any]) -> dict[str, Any]:
    """One ready devbox shared by the tests that do not need a fresh one."""
    key = vm_api.admin_key
    response = await vm_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": default_image["id"]},
        json={"name": "shared", "metadata": {"purpose": "tests"}},
        headers=vm_api.auth(key),
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["status"] == "provisioning"
    return await wait_status(vm_api, key, created["id"])
