"""Density on real VMs: instances of the image share its memory template and still diverge,
the warm pool's processes serve boots and are never reused after a failed restore, a pooled
instance is adopted after a restart, and idle guests stay cheap and answer at once."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from vm_fixtures import CACHE_DIR, sh

from devbox_service.backends.base import BackendError, InstanceInfo
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.driver import QemuBackend
from devbox_service.backends.qemu.machine import Machine
from devbox_service.backends.qemu.util import pid_alive, proc_pss_kb, proc_usage

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def pool_config(tmp_path_factory: pytest.TempPathFactory) -> QemuConfig:
    return QemuConfig(
        state_dir=str(tmp_path_factory.mktemp("density")), cache_dir=CACHE_DIR, warm_pool=1
    )


@pytest.fixture(scope="module")
async def pooled_backend(pool_config: QemuConfig) -> AsyncIterator[QemuBackend]:
    backend = QemuBackend(pool_config)
    await backend.start()
    await backend.ensure_image()
    try:
        yield backend
    finally:
        for inst in await backend.list_instances():
            await backend.delete(inst.id)
        await backend.close()


async def pool_ready(backend: QemuBackend) -> int:
    """The pid of the process waiting in the pool, once there is one."""
    async with asyncio.timeout(60):
        while not backend._pool or backend._pool[0].machine.pid is None:
            await asyncio.sleep(0.05)
    pid = backend._pool[0].machine.pid
    assert pid is not None
    return pid


def template_of(backend: QemuBackend) -> Path:
    assert backend._boot is not None and backend._boot.memory_file is not None
    return Path(backend._boot.memory_file)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_instances_share_the_template_and_still_diverge(
    pooled_backend: QemuBackend,
) -> None:
    template = template_of(pooled_backend)
    before = sha256(template)
    assert template.stat().st_mode & 0o222 == 0  # nobody writes the template
    boot_id = (await pooled_backend.list_images())[0].boot_snapshot_id
    a, b = await pooled_backend.branch(boot_id, ["share-a", "share-b"])

    # a write in one (memory and disk) is invisible in the other
    await sh(a, "head -c 32M /dev/urandom > /dev/shm/mine; echo a-only > /root/mine; sync")
    assert (await sh(b, "ls /dev/shm /root")).split().count("mine") == 0
    await sh(b, "echo b-only > /dev/shm/other")
    assert "other" not in await sh(a, "ls /dev/shm")
    assert sha256(template) == before  # the clones' writes stayed theirs

    # their processes share the template's pages: proportional memory is below resident
    for vm in (a, b):
        pid = pooled_backend._instances[vm.id].pid
        assert pid is not None
        assert proc_pss_kb(pid) < proc_usage(pid)[0]
        assert await pooled_backend.memory_mb(vm.id) < (await pooled_backend.stats(vm.id)).rss_mb
    for vm in (a, b):
        await pooled_backend.delete(vm.id)


async def test_a_boot_takes_the_pooled_process_and_a_failed_restore_never_reuses_it(
    pooled_backend: QemuBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot_id = (await pooled_backend.list_images())[0].boot_snapshot_id
    waiting = await pool_ready(pooled_backend)
    vm = await pooled_backend.boot(boot_id, "pooled-ok")
    assert pooled_backend._instances[vm.id].pid == waiting  # no QEMU was started for it
    assert (await sh(vm, "echo ready")).strip() == "ready"

    broken = await pool_ready(pooled_backend)
    assert broken != waiting
    real_restore = Machine.restore

    async def failing_restore(self: Machine, state_file: Path) -> None:
        raise BackendError("the state did not load (test)")

    monkeypatch.setattr(Machine, "restore", failing_restore)
    with pytest.raises(BackendError, match="did not load"):
        await pooled_backend.boot(boot_id, "pooled-broken")
    monkeypatch.setattr(Machine, "restore", real_restore)
    assert not pid_alive(broken, "qmp.sock")  # ended, not put back
    assert not (Path(pooled_backend.config.state_dir) / "instances" / "pooled-broken").exists()

    fresh = await pool_ready(pooled_backend)
    assert fresh not in (waiting, broken)
    again = await pooled_backend.boot(boot_id, "pooled-again")
    assert (await sh(again, "echo again")).strip() == "again"
    for done in (vm, again):
        await pooled_backend.delete(done.id)


async def test_idle_guests_cost_little_cpu_and_answer_at_once(
    pooled_backend: QemuBackend,
) -> None:
    boot_id = (await pooled_backend.list_images())[0].boot_snapshot_id
    idle: list[InstanceInfo] = await pooled_backend.branch(boot_id, ["idle-a", "idle-b"])
    await asyncio.sleep(3)
    pids = [pooled_backend._instances[vm.id].pid for vm in idle]
    before = [proc_usage(pid)[1] for pid in pids if pid is not None]
    await asyncio.sleep(5)
    after = [proc_usage(pid)[1] for pid in pids if pid is not None]
    for start, end in zip(before, after, strict=True):
        assert end - start < 0.5, "an idle guest used over a tenth of a core"
    for vm in idle:
        assert (await sh(vm, "tmux new-session -d -s idle 'sleep 600'; tmux ls")).startswith(
            "idle:"
        )
        await pooled_backend.delete(vm.id)


async def test_a_pooled_instance_survives_a_standby_and_a_restart(
    pool_config: QemuConfig, pooled_backend: QemuBackend
) -> None:
    boot_id = (await pooled_backend.list_images())[0].boot_snapshot_id
    await pool_ready(pooled_backend)
    vm = await pooled_backend.boot(boot_id, "pooled-kept")
    await sh(vm, "echo kept > /root/kept")
    await pooled_backend.standby(vm.id)
    woken = await pooled_backend.wake(vm.id)
    assert (await sh(woken, "cat /root/kept")).strip() == "kept"

    await pooled_backend.close()  # the service stops (its VMs run on) ...
    later = QemuBackend(pool_config)  # ... and another one starts on the same state
    await later.start()
    try:
        adopted = await later.get_instance(vm.id)
        assert adopted.state.value == "running"
        assert (await sh(adopted, "cat /root/kept")).strip() == "kept"
    finally:
        await later.delete(vm.id)
        await later.close()
