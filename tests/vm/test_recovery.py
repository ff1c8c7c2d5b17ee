"""Crashes on real VMs: the service killed right after it accepted a create (the next start
finishes the devbox), and one devbox's QEMU killed (the devbox says so and comes back)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import httpx
import pytest
from live import live_service
from vm_fixtures import qemu_pid

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


def test_a_killed_vm_turns_error_and_resume_boots_it_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with live_service(tmp_path_factory.mktemp("killed")) as service:
        devbox_id = service.create_devbox()["id"]
        service.run_in(devbox_id, "echo kept > /root/on-disk; sync")
        pid = qemu_pid(service.data_dir, devbox_id)
        assert pid is not None, f"no QEMU process for {devbox_id}"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            shown = service.http.get(f"/api/devboxes/{devbox_id}", headers=service.headers())
            if shown.json()["status"] == "error":
                break
            assert time.monotonic() < deadline, "a dead VM was still reported " + shown.text
            time.sleep(0.5)
        resumed = service.http.post(f"/api/devboxes/{devbox_id}/resume", headers=service.headers())
        assert resumed.status_code == 200 and resumed.json()["status"] == "ready", resumed.text
        assert service.run_in(devbox_id, "cat /root/on-disk") == "kept\n"


def test_sigterm_ends_streams_and_ssh_sessions_in_bounded_time_and_vms_stay(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("sigterm")
    with live_service(data_dir, keep_devboxes=True) as service:
        devbox_id = service.create_devbox()["id"]
        images = service.http.get("/api/images", headers=service.headers()).json()["data"]
        created = service.http.post(
            "/api/templates",
            json={
                "name": "slow",
                "yaml": "name: slow\nsteps:\n  - run: sleep 300\n",
                "baseSnapshotOption": images[0]["id"],
            },
            headers=service.headers(),
        )
        template_id = created.json()["id"]
        run_id = service.http.post(
            f"/api/templates/{template_id}/cache", headers=service.headers()
        ).json()["run_id"]
        stream_ended = threading.Event()

        def follow() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                service.http.stream(
                    "GET",
                    f"/api/templates/{template_id}/events",
                    params={"run_id": run_id},
                    headers={**service.headers(), "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(None),
                ) as response,
            ):
                for _ in response.iter_lines():
                    pass
            stream_ended.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        ssh = service.gateway_client(devbox_id)
        time.sleep(2)  # the stream is open and waiting for more events
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(40)  # raises if the open stream held the stop
        assert stream_ended.wait(10), "the event stream ended with the service"
        transport = ssh.get_transport()
        deadline = time.monotonic() + 10
        while transport is not None and transport.is_active():
            assert time.monotonic() < deadline, "the SSH session outlived the service"
            time.sleep(0.2)
        ssh.close()
    with live_service(data_dir) as service:
        assert service.run_in(devbox_id, "echo still-here") == "still-here\n"
