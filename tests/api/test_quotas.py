"""Quotas and admission control on the in-memory VM backend: past a limit a request answers
429 naming the limit, before any record is written or VM started."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support import Api, create_devbox, wait_ready

from devbox_service.app import create_app
from devbox_service.auth.models import Role
from devbox_service.backends.memory import MemoryBackend
from devbox_service.cli import main as cli
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.devboxes.quotas import host_memory_mb
from devbox_service.errors import LimitReached
from devbox_service.settings import Settings


@pytest.fixture
async def limited(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> AsyncIterator[Api]:
    settings = make_settings(
        vm_backend="qemu",
        ssh_port=0,
        limit_devboxes_per_user=2,
        limit_devboxes_per_org=3,
        limit_snapshots_per_user=1,
    )
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        yield Api(client, settings)


async def image(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    return str(images["data"][0]["id"])


async def create(api: Api, key: str) -> Any:
    return await api.client.post(
        "/api/devboxes", params={"snapshot_id": await image(api)}, headers=api.auth(key)
    )


async def test_devbox_limits_per_user_and_org(limited: Api, fake_backend: MemoryBackend) -> None:
    first = await create_devbox(limited, await image(limited))
    await create_devbox(limited, await image(limited))
    refused = await create(limited, limited.admin_key)
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-devbox-limit"] == "devboxes_per_user"
    assert "at most 2 devboxes per user" in refused.json()["detail"]
    assert "delete" in refused.json()["detail"]
    booted = len(fake_backend.calls_to("branch"))

    branch = await limited.client.post(
        f"/api/devboxes/{first['id']}/branch",
        json={"count": 2},
        headers=limited.auth(limited.admin_key),
    )
    assert branch.status_code == 429, "a branch that would cross a limit is refused whole"
    snapshots = await limited.client.get("/api/snapshots", headers=limited.auth(limited.admin_key))
    assert snapshots.json()["data"] == [] and len(fake_backend.calls_to("branch")) == booted

    teammate = await limited.new_user("teammate", org="default", role=Role.MEMBER)
    assert (await create(limited, teammate)).status_code == 200
    org_full = await create(limited, teammate)
    assert org_full.status_code == 429 and org_full.headers["x-devbox-limit"] == "devboxes_per_org"

    await limited.client.delete(
        f"/api/devboxes/{first['id']}", headers=limited.auth(limited.admin_key)
    )
    assert (await create(limited, limited.admin_key)).status_code == 200, "deleting frees room"


async def test_snapshot_limit(limited: Api) -> None:
    devbox_id = (await create_devbox(limited, await image(limited)))["id"]
    auth = limited.auth(limited.admin_key)
    assert (
        await limited.client.post(f"/api/devboxes/{devbox_id}/save", headers=auth)
    ).status_code == 200
    refused = await limited.client.post(f"/api/devboxes/{devbox_id}/save", headers=auth)
    assert refused.status_code == 429 and refused.headers["x-devbox-limit"] == "snapshots_per_user"


async def test_host_memory_admission(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    # room for exactly one 256 MB guest (plus its 64 MB overhead) on this host
    settings = make_settings(
        vm_backend="qemu", ssh_port=0, host_memory_reserve_mb=host_memory_mb() - 400
    )
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        await create_devbox(api, await image(api))
        refused = await create(api, api.admin_key)
        assert refused.status_code == 429 and refused.headers["x-devbox-limit"] == "host_memory"
        assert "pause or delete" in refused.json()["detail"]
        assert len(fake_backend.calls_to("branch")) == 1, "no VM was started for the refusal"


def test_admins_set_and_show_limits(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    monkeypatch.setenv("DEVBOX_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("DEVBOX_VM_BACKEND", "none")
    assert cli(["users", "create", "alice"]) == 0
    assert cli(["limits", "set", "--user", "alice", "--devboxes", "5"]) == 0
    assert cli(["limits", "show", "--user", "alice"]) == 0
    shown = capsys.readouterr().out.splitlines()[-1]
    assert shown == "user alice: devboxes 5, snapshots 100, disk 40960 MB"
    assert cli(["limits", "set", "--org", "nobody", "--devboxes", "1"]) == 1
    assert "not found" in capsys.readouterr().err


async def test_template_step_snapshots_count_toward_the_orgs_snapshot_limit(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    """Each build step leaves a cached snapshot on disk: an org cannot pile them up past its
    snapshot limit by building templates (nor save past it once steps fill it)."""
    settings = make_settings(vm_backend="qemu", ssh_port=0, limit_snapshots_per_org=3)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        auth = api.auth(api.admin_key)
        body = {"name": "t", "yaml": "name: t\nsteps:\n  - run: echo 1\n"}
        created = await client.post(
            "/api/templates", json={**body, "baseSnapshotOption": await image(api)}, headers=auth
        )
        template_id = created.json()["id"]
        devbox_id = (await create_devbox(api, await image(api)))["id"]
        services = api.services
        org_id = (await services.identities.authenticate(api.admin_key)).org_id
        steps = TemplateStore(services.database)
        for n in range(2):  # two steps a build left, as a build caches them
            snapshot = await services.checkpoints.save_unlisted(devbox_id)
            await steps.cache_step(org_id, f"fingerprint-{n}", snapshot.id)
        saved = await client.post(f"/api/devboxes/{devbox_id}/save", headers=auth)
        assert saved.status_code == 200, "two steps and one save: three"
        full = await client.post(f"/api/devboxes/{devbox_id}/save", headers=auth)
        assert full.status_code == 429 and full.headers["x-devbox-limit"] == "snapshots_per_org"
        assert "template build steps included: 2" in full.json()["detail"]
        build = await client.post(f"/api/templates/{template_id}/cache", json={}, headers=auth)
        assert build.status_code == 429, build.text
        assert build.headers["x-devbox-limit"] == "snapshots_per_org"
        with pytest.raises(LimitReached):
            await services.checkpoints.save_unlisted(devbox_id)  # a step of a running build
