"""Running the service on real VMs, as an operator does: a stop that says which devboxes keep
running (and ends the warm pool), `stop-vms` ending them on purpose with their processes
kept on disk, and a backup taken while serving that brings the service back after its
database is lost, with the same devboxes, keys, secrets and templates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from live import live_service
from support import operator_cli
from vm_fixtures import CACHE_DIR, is_pooled, qemu_pid

pytestmark = pytest.mark.vm

SECRET = "kept-through-a-restore-42"


def qemu_processes(data_dir: Path) -> list[tuple[int, bytes]]:
    """(pid, command line) of the QEMU processes running with files under `data_dir`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes()
        except OSError:
            continue
        if args.startswith(b"qemu-system") and str(data_dir).encode() in args:
            found.append((int(cmdline.parent.name), args))
    return found


def operator(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return operator_cli(data_dir, *args, CACHE_DIR=CACHE_DIR)


def test_stop_then_stop_vms_then_restore_a_lost_database(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("operations")
    backup = data_dir.parent / "operations-backup.tar"
    with live_service(data_dir, keep_devboxes=True) as live:
        devbox_id = live.create_devbox()["id"]
        live.run_in(devbox_id, "echo on-disk > /root/kept.txt")
        session = live.http.post(
            f"/api/devboxes/{devbox_id}/tmux/sessions",
            json={"name": "keep"},
            headers=live.headers(),
        )
        assert session.status_code == 200, session.text
        put = live.http.put(
            "/api/user-secrets/KEPT", json={"value": SECRET}, headers=live.headers()
        )
        assert put.status_code == 200, put.text
        template = live.http.post(
            "/api/templates",
            json={
                "name": "kept",
                "yaml": "name: kept\nsteps:\n  - run: echo\n",
                "baseSnapshotOption": "default",
            },
            headers=live.headers(),
        )
        assert template.status_code == 201, template.text

        refused = operator(data_dir, "stop-vms")
        assert refused.returncode == 1 and "in use by devbox-service serve" in refused.stderr
        taken = operator(data_dir, "backup", str(backup))  # while serving
        assert taken.returncode == 0, taken.stderr
        assert "1 devboxes" in taken.stdout and "1 templates" in taken.stdout
        key = live.key

    said = (data_dir / "service.log").read_text()
    assert "1 devbox VM(s) keep running" in said and devbox_id in said
    assert "devbox-service stop-vms" in said
    kept = qemu_pid(data_dir, devbox_id)
    assert kept is not None, "devboxes keep running, by design"
    waiting = [pid for pid, cmdline in qemu_processes(data_dir) if is_pooled(cmdline)]
    assert waiting in ([], [kept]), "the warm pool ends with the service"  # (a taken one
    # keeps the pool's name on its command line)

    ended = operator(data_dir, "stop-vms")
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert f"{devbox_id}  standby" in ended.stdout
    assert qemu_processes(data_dir) == [], "no VM of this data dir runs now"

    # The database and its key are lost; the VM files are not. The backup brings it back.
    (data_dir / "devbox.sqlite3").unlink()
    (data_dir / "secret-box.key").unlink()
    restored = operator(data_dir, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr

    with live_service(data_dir) as live:
        assert live.key == key
        shown = live.http.get(f"/api/devboxes/{devbox_id}", headers=live.headers()).json()
        assert shown["status"] == "paused", shown  # standby shows as paused
        resumed = live.http.post(f"/api/devboxes/{devbox_id}/resume", headers=live.headers())
        assert resumed.status_code == 200, resumed.text
        live.wait_ready(devbox_id)
        assert live.run_in(devbox_id, "cat /root/kept.txt") == "on-disk\n"
        sessions = live.http.get(
            f"/api/devboxes/{devbox_id}/tmux/sessions", headers=live.headers()
        ).json()
        assert "keep" in [s["name"] for s in sessions["data"]], "processes came back"
        secret = live.http.get("/api/user-secrets/KEPT", headers=live.headers()).json()
        assert secret["value"] == SECRET
        templates = live.http.get("/api/templates", headers=live.headers()).json()["data"]
        assert [t["name"] for t in templates] == ["kept"]
