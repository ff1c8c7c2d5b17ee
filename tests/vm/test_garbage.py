"""`devbox-service gc` on a real service with real VMs: what nothing references goes (files
left by crashes, deleted snapshots, image builds of older recipes), what is referenced or may
still be in use stays, and the devbox and its snapshot keep working."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live import live_service
from vm_fixtures import CACHE_DIR

pytestmark = pytest.mark.vm

LONG_AGO = time.time() - 24 * 3600


def aged(path: Path) -> Path:
    """Make a file or directory look abandoned a day ago."""
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def test_gc_removes_what_nothing_references_and_keeps_the_rest(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("gc")
    vms = data_dir / "vms"
    with live_service(data_dir) as service:
        devbox_id = service.create_devbox()["id"]
        service.run_in(devbox_id, "echo kept > /root/kept; sync")
        saved = service.http.post(
            f"/api/devboxes/{devbox_id}/save", json={"name": "keep"}, headers=service.headers()
        )
        assert saved.status_code == 200, saved.text
        snapshot_id = saved.json()["id"]

        orphan_layer = vms / "disks" / "orphan.qcow2"
        orphan_layer.write_bytes(os.urandom(1 << 20))
        aged(orphan_layer)
        young_layer = vms / "disks" / "young.qcow2"  # may be a save under way: kept for now
        young_layer.write_bytes(b"x")
        stale_save = vms / "snapshots" / "snapshot_crashed.tmp"
        stale_save.mkdir()
        (stale_save / "state").write_bytes(os.urandom(1 << 20))
        aged(stale_save)
        ghost = vms / "instances" / "devbox_ghost"
        ghost.mkdir()
        aged(ghost)
        images = Path(CACHE_DIR) / "images"
        unused_build = images / f"gc-test-{secrets.token_hex(4)}"
        (unused_build / "users").mkdir(parents=True)
        (unused_build / "base.qcow2").write_bytes(os.urandom(1 << 20))
        (unused_build / "users" / "gone").write_text(str(data_dir / "no-longer-there"))
        aged(unused_build)
        shared_build = images / f"gc-test-{secrets.token_hex(4)}"
        (shared_build / "users").mkdir(parents=True)
        (shared_build / "users" / "other").write_text(str(tmp_path_factory.mktemp("other")))
        aged(shared_build)
        layers_in_use = {p for p in (vms / "disks").glob("*.qcow2")} - {orphan_layer, young_layer}

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_")},
            "DEVBOX_DATA_DIR": str(data_dir),
            "DEVBOX_PORT": str(service.port),
            "DEVBOX_CACHE_DIR": CACHE_DIR,
        }
        ran = subprocess.run(
            [sys.executable, "-m", "devbox_service", "gc"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
        try:
            for gone in (orphan_layer, stale_save, ghost, unused_build):
                assert not gone.exists(), f"{gone} was kept"
                assert str(gone) in ran.stdout
            assert "freed" in ran.stdout
            assert young_layer.exists() and shared_build.exists()
            assert all(layer.exists() for layer in layers_in_use)
            assert service.run_in(devbox_id, "cat /root/kept") == "kept\n"
            booted = service.http.post(
                "/api/devboxes",
                params={"snapshot_id": snapshot_id},
                json={"name": "after-gc"},
                headers=service.headers(),
            )
            assert booted.status_code == 200, booted.text
            service.wait_ready(booted.json()["id"])
            assert service.run_in(booted.json()["id"], "cat /root/kept") == "kept\n"
        finally:
            subprocess.run(["rm", "-rf", str(shared_build), str(unused_build)], check=False)
