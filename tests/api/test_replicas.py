"""Two API replicas on one PostgreSQL: what one writes the other serves, caches included.

Each replica is a whole app with a data dir of its own; they share the database and the
secret box key (copied, as an operator would ship it to every replica).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from support import Api, start_refusal

from devbox_service.app import create_app
from devbox_service.backends.memory import MemoryBackend
from devbox_service.db.local_cluster import PostgresServer, running_postgres
from devbox_service.secrets.box import KEY_FILE
from devbox_service.settings import load_settings

REVOKED_WITHIN_SECONDS = 1.0


@pytest.fixture
async def replicas(postgres: PostgresServer, tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    url = postgres.new_database()
    first = load_settings(
        environ={}, data_dir=str(tmp_path / "a"), vm_backend="none", database_url=url
    )
    second = load_settings(
        environ={}, data_dir=str(tmp_path / "b"), vm_backend="none", database_url=url
    )
    async with AsyncTestClient(create_app(first)) as client_a:
        (tmp_path / "b").mkdir(mode=0o700)
        shutil.copy(tmp_path / "a" / KEY_FILE, tmp_path / "b" / KEY_FILE)
        async with AsyncTestClient(create_app(second)) as client_b:
            yield Api(client_a, first), Api(client_b, second)


async def test_a_key_made_on_one_replica_works_on_the_other_and_revoked_stops_at_once(
    replicas: tuple[Api, Api],
) -> None:
    a, b = replicas
    assert not (Path(b.settings.data_dir) / "admin.key").exists()  # one bootstrap per store
    key = await a.new_user("ann")
    for api in (a, b, b):  # B's second answer comes from its cache (the first wrote last use)
        response = await api.client.get("/api/devboxes", headers=api.auth(key))
        assert response.status_code == 200, response.text
    # A revokes the key: B must hear of it (its cache is dropped), not serve it on
    (record,) = [k for k in await a.services.identities.keys() if key.startswith(k.prefix)]
    await a.services.identities.revoke_key(record.id)
    deadline = time.monotonic() + REVOKED_WITHIN_SECONDS
    while True:
        response = await b.client.get("/api/devboxes", headers=b.auth(key))
        if response.status_code == 401:
            break
        assert response.status_code == 200
        assert time.monotonic() < deadline, "B still accepts a key A revoked"
        await asyncio.sleep(0.02)


async def test_a_secret_sealed_on_one_replica_opens_on_the_other(
    replicas: tuple[Api, Api],
) -> None:
    a, b = replicas
    admin = a.auth(a.admin_key)
    made = await b.client.put("/api/user-secrets/TOKEN", json={"value": "s3cret"}, headers=admin)
    assert made.status_code == 200, made.text
    read = await a.client.get("/api/user-secrets/TOKEN", headers=admin)
    assert read.status_code == 200, read.text
    assert read.json()["value"] == "s3cret"


async def test_a_replica_with_another_secret_key_is_refused_before_it_serves(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    first = load_settings(
        environ={}, data_dir=str(tmp_path / "a"), vm_backend="none", database_url=url
    )
    stray = load_settings(
        environ={}, data_dir=str(tmp_path / "b"), vm_backend="none", database_url=url
    )
    async with AsyncTestClient(create_app(first)):
        said = await start_refusal(create_app(stray))  # b made a key of its own
    assert KEY_FILE in said and "copy" in said


async def test_only_one_process_on_a_database_runs_vms(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    backends = [MemoryBackend(), MemoryBackend()]
    for backend in backends:
        await backend.start()
        await backend.ensure_image()
    settings = [
        load_settings(
            environ={}, data_dir=str(tmp_path / n), vm_backend="qemu", ssh_port=0, database_url=url
        )
        for n in ("a", "b")
    ]
    async with AsyncTestClient(create_app(settings[0], backend=backends[0])):
        (tmp_path / "b").mkdir(mode=0o700)
        shutil.copy(tmp_path / "a" / KEY_FILE, tmp_path / "b" / KEY_FILE)
        said = await start_refusal(create_app(settings[1], backend=backends[1]))
        assert "already runs the VMs" in said and "DEVBOX_VM_BACKEND=none" in said
    # once the first is gone, the claim is free
    async with AsyncTestClient(create_app(settings[1], backend=backends[1])) as client:
        assert (await client.get("/health")).status_code == 200


async def test_postgres_restarted_under_a_replica_is_503_then_nothing_is_lost(
    tmp_path: Path,
) -> None:
    with running_postgres() as server:
        settings = load_settings(
            environ={},
            data_dir=str(tmp_path / "a"),
            vm_backend="none",
            database_url=server.new_database(),
        )
        async with AsyncTestClient(create_app(settings)) as client:
            api = Api(client, settings)
            key = await api.new_user("ann")
            written = await client.put(
                "/api/user-secrets/KEPT", json={"value": "v"}, headers=api.auth(key)
            )
            assert written.status_code == 200, written.text
            server.stop()
            for method, path in (("GET", "/api/devboxes"), ("GET", "/api/user-secrets/KEPT")):
                down = await client.request(method, path, headers=api.auth(key))
                assert down.status_code == 503, (path, down.status_code, down.text)
                assert "database" in down.text
            assert (await client.get("/health/ready")).status_code == 503
            server.start()
            deadline = time.monotonic() + 20
            while (await client.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "the replica never recovered"
                await asyncio.sleep(0.1)
            kept = await client.get("/api/user-secrets/KEPT", headers=api.auth(key))
            assert kept.status_code == 200 and kept.json()["value"] == "v"
