"""Staged VM fixtures (built -> booted -> saved -> branched), paid for once per session.

Real QEMU guests under whatever accelerator works here (TCG on nested hosts). The image and its
boot snapshot are cached in ~/.cache/devbox-service across runs; instances live in a tmp dir.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import guest_connections

from devbox_service.backends.base import InstanceInfo, SnapshotInfo
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.driver import QemuBackend
from devbox_service.settings import load_settings

CACHE_DIR = load_settings().cache_dir  # DEVBOX_CACHE_DIR, else the XDG cache directory

# A tmux session that keeps counting, so tests can tell a live session from a restarted one.
# Each value is written aside and renamed in, so a reader never sees the file empty.
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /root/counter.new; "
    "mv /root/counter.new /root/counter; sleep 0.2; done"
)


async def sh(vm: InstanceInfo, command: str, timeout: float = 60.0) -> str:
    """Run a command in the guest over SSH and return its stdout; fail the test if it fails."""
    result = await guest_connections.run(vm.ssh, command, timeout=timeout, check=False)
    assert result.exit_status == 0, f"{command!r} -> {result.exit_status}: {result.stderr!r}"
    return str(result.stdout)


def qemu_pid(data_dir: Path, devbox_id: str) -> int | None:
    """The pid of a devbox's QEMU process while it runs, from its manifest (a process taken
    from the warm pool has the pool's name on its command line, not the devbox's)."""
    manifest = data_dir / "vms" / "instances" / devbox_id / "manifest.json"
    with contextlib.suppress(FileNotFoundError):
        pid = json.loads(manifest.read_text()).get("pid")
        if pid is not None and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"qemu"):
            return int(pid)
    return None


def is_pooled(cmdline: bytes) -> bool:
    """A QEMU process of a warm pool (started ahead, waiting for a state)."""
    return b"-name\0pool-" in cmdline


@pytest.fixture(scope="session")
def qemu_config(tmp_path_factory: pytest.TempPathFactory) -> QemuConfig:
    return QemuConfig(state_dir=str(tmp_path_factory.mktemp("vm")), cache_dir=CACHE_DIR)


@pytest.fixture(scope="session")
async def qemu_backend(qemu_config: QemuConfig) -> AsyncIterator[QemuBackend]:
    """A started backend with the default image ensured; deletes all it made on teardown."""
    backend = QemuBackend(qemu_config)
    await backend.start()
    await backend.ensure_image(progress=lambda line: print(line, flush=True))
    try:
        yield backend
    finally:
        for inst in await backend.list_instances():
            await backend.delete(inst.id)
        for snap in await backend.list_snapshots():
            if not snap.id.startswith("boot-"):
                await backend.delete_snapshot(snap.id)
        await backend.close()


@pytest.fixture(scope="session")
async def boot_snapshot_id(qemu_backend: QemuBackend) -> str:
    (image,) = await qemu_backend.list_images()
    return image.boot_snapshot_id


@pytest.fixture(scope="session")
async def booted_vm(qemu_backend: QemuBackend, boot_snapshot_id: str) -> InstanceInfo:
    """One instance restored from the boot snapshot, shared by tests that keep it alive."""
    return await qemu_backend.boot(boot_snapshot_id, "vm-booted")


@pytest.fixture(scope="session")
async def saved_snapshot(qemu_backend: QemuBackend, booted_vm: InstanceInfo) -> SnapshotInfo:
    """`booted_vm` saved while a marker file and a counting tmux session exist."""
    await sh(
        booted_vm,
        "echo from-before-save > /root/marker; "
        f"tmux new-session -d -s work '{COUNTER}'; sleep 0.5; test -s /root/counter",
    )
    return await qemu_backend.save(booted_vm.id, "snap-saved")


@pytest.fixture(scope="session")
async def clones(qemu_backend: QemuBackend, saved_snapshot: SnapshotInfo) -> list[InstanceInfo]:
    """Two instances branched at once from `saved_snapshot`."""
    return await qemu_backend.branch(saved_snapshot.id, ["vm-clone-a", "vm-clone-b"])
