"""Two replicas as users run them (`devbox-service serve` processes) on one PostgreSQL.

Replica A runs the VMs (QEMU); replica B shares the database with no VM backend. What is rows
is served by either: a devbox made through A is read through B, and a build started through A
streams every one of its events through B, also when the database drops B's listening
connection mid-build (B re-reads the rows; announcements are only wake-ups).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from live import LiveService, live_service

from devbox_service.db.local_cluster import PostgresServer
from devbox_service.secrets.box import KEY_FILE

pytestmark = pytest.mark.vm

BUILD = """
name: across
steps:
  - title: one
    run: echo one
  - title: slow
    run: for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done
  - title: three
    run: echo three > /root/three
"""


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[tuple[LiveService, LiveService]]:
    url = postgres.new_database()
    a_dir = tmp_path_factory.mktemp("replica-a")
    with live_service(a_dir, DATABASE_URL=url) as a:
        b_dir = tmp_path_factory.mktemp("replica-b")
        b_dir.chmod(0o700)
        shutil.copy(a_dir / KEY_FILE, b_dir / KEY_FILE)  # as an operator ships it
        with live_service(b_dir, DATABASE_URL=url, VM_BACKEND="none") as b:
            b.key = a.key
            yield a, b


def _kill_listeners(postgres: PostgresServer) -> None:
    async def kill() -> int:
        connection = await asyncpg.connect(postgres.admin_url)
        try:
            return int(
                await connection.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND pid != pg_backend_pid()"
                )
            )
        finally:
            await connection.close()

    assert asyncio.run(kill()) >= 1


def test_a_devbox_made_through_one_replica_is_read_through_the_other(
    replicas: tuple[LiveService, LiveService],
) -> None:
    a, b = replicas
    devbox = a.create_devbox()
    seen = b.http.get(f"/api/devboxes/{devbox['id']}", headers=b.headers())
    assert seen.status_code == 200, seen.text
    assert seen.json()["status"] == "ready" and seen.json()["id"] == devbox["id"]
    assert devbox["id"] in {
        d["id"] for d in b.http.get("/api/devboxes", headers=b.headers()).json()["data"]
    }
    paused = a.http.post(f"/api/devboxes/{devbox['id']}/pause", headers=a.headers())
    assert paused.status_code == 200, paused.text
    assert (
        b.http.get(f"/api/devboxes/{devbox['id']}", headers=b.headers()).json()["status"]
        == "paused"
    )
    # what needs the VM answers 503 on the replica without one, and changes nothing
    refused = b.http.post(f"/api/devboxes/{devbox['id']}/resume", headers=b.headers())
    assert refused.status_code == 503, refused.text
    assert (
        a.http.get(f"/api/devboxes/{devbox['id']}", headers=a.headers()).json()["status"]
        == "paused"
    )


def test_a_build_through_one_replica_streams_whole_through_the_other(
    replicas: tuple[LiveService, LiveService], postgres: PostgresServer
) -> None:
    a, b = replicas
    images = a.http.get("/api/images", headers=a.headers()).json()["data"]
    image = next(i["id"] for i in images if i["default"])
    body = {"name": "across", "yaml": BUILD, "baseSnapshotOption": image, "description": None}
    created = a.http.post("/api/templates", json=body, headers=a.headers())
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    started = a.http.post(f"/api/templates/{template_id}/cache", headers=a.headers())
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]

    streamed: list[dict[str, Any]] = []
    killed = threading.Event()

    def kill_when_ticking() -> None:
        deadline = time.monotonic() + 300
        while not any(e.get("type") == "step_started" and e.get("index") == 1 for e in streamed):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        _kill_listeners(postgres)
        killed.set()

    killer = threading.Thread(target=kill_when_ticking)
    killer.start()
    b.build_events(template_id, run_id, into=streamed)
    killer.join()
    assert killed.is_set(), "the build ended before the listener could be killed"
    assert streamed[-1]["type"] == "completed", streamed[-1]
    history = a.http.get(
        f"/api/templates/{template_id}/events",
        params={"run_id": run_id},
        headers={**a.headers(), "Accept": "text/event-stream"},
    )
    stored = [
        json.loads(line[5:]) for line in history.text.splitlines() if line.startswith("data:")
    ]
    assert streamed == stored
