"""A crash of the service (SIGKILL) right after it accepted a create: the next start finishes
the devbox it answered for, on real VMs."""

from __future__ import annotations

import pytest
from live import live_service

pytestmark = pytest.mark.vm


def test_a_create_answered_just_before_a_crash_is_finished(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("crash")
    with live_service(data_dir, keep_devboxes=True) as service:
        images = service.http.get("/api/images", headers=service.headers()).json()["data"]
        created = service.http.post(
            "/api/devboxes",
            params={"snapshot_id": images[0]["id"]},
            json={"name": "accepted"},
            headers=service.headers(),
        )
        assert created.status_code == 200 and created.json()["status"] == "provisioning"
        assert service.process is not None
        service.process.kill()  # the answer is out; the restore is not done
        service.process.wait(30)
    with live_service(data_dir) as service:
        devbox = service.wait_ready(created.json()["id"])
        assert service.run_in(devbox["id"], "echo alive") == "alive\n"
