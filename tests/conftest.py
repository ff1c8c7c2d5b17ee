"""Shared fixtures. VM fixtures (built -> booted -> saved) live in vm_fixtures.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from devbox_service.app import create_app
from devbox_service.auth.models import Role
from devbox_service.settings import Settings, load_settings

pytest_plugins: list[str] = []  # vm_fixtures added when present

ApiClient = AsyncTestClient[Any]


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": str(tmp_path / "data"), "vm_backend": "none"}
        values.update(overrides)
        return load_settings(environ={}, **values)

    return make


class Api:
    """A running app (real SQLite file, real HTTP through the test client) and its users."""

    def __init__(self, client: ApiClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.services = client.app.state.services

    @property
    def admin_key(self) -> str:
        return (Path(self.settings.data_dir) / "admin.key").read_text().strip()

    async def new_user(self, name: str, *, org: str | None = None, role: Role = Role.MEMBER) -> str:
        """Create a user (in `org`, or their own) and return an API key for them."""
        await self.services.identities.create_user(name, org=org, role=role)
        issued = await self.services.identities.issue_key(name, org=org)
        return issued.key

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    settings = make_settings()
    async with AsyncTestClient(create_app(settings)) as client:
        yield Api(client, settings)
