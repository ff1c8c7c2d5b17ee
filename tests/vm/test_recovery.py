"""Crashes on real VMs: the service killed right after it accepted a create (the next start
finishes the devbox), and one devbox's QEMU killed (the devbox says so and comes back)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

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


def _qemu_pid(devbox_id: str) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args[0].endswith(b"qemu-system-x86_64") and devbox_id.encode() in args:
                return int(cmdline.parent.name)
    raise AssertionError(f"no QEMU process for {devbox_id}")


def test_a_killed_vm_turns_error_and_resume_boots_it_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with live_service(tmp_path_factory.mktemp("killed")) as service:
        devbox_id = service.create_devbox()["id"]
        service.run_in(devbox_id, "echo kept > /root/on-disk; sync")
        os.kill(_qemu_pid(devbox_id), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            shown = service.http.get(f"/api/devboxes/{devbox_id}", headers=service.headers())
            if shown.json()["status"] == "error":
                break
            assert time.monotonic() < deadline, "a dead VM was still reported " + shown.text
            time.sleep(0.5)
        resumed = service.http.post(
            f"/api/devboxes/{devbox_id}/resume", headers=service.headers()
        )
        assert resumed.status_code == 200 and resumed.json()["status"] == "ready", resumed.text
        assert service.run_in(devbox_id, "cat /root/on-disk") == "kept\n"
