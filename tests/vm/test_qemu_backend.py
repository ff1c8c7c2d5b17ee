"""The QEMU backend against real guests: restore, save, branch, pause, reboot, restart, delete.

Assertions are about behaviour, never wall-clock speed (that is bench/bench_vm.py's job).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from pathlib import Path

import pytest
from vm_fixtures import sh

from devbox_service.backends.base import (
    InstanceInfo,
    InstanceState,
    InvalidState,
    NotFound,
    SnapshotInfo,
)
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.console import CONSOLE_LIMIT
from devbox_service.backends.qemu.disk_chain import live_chain
from devbox_service.backends.qemu.driver import QemuBackend
from devbox_service.backends.qemu.snapshots import FLATTEN_DEPTH
from devbox_service.backends.qemu.util import pid_alive

pytestmark = pytest.mark.vm

TICKS = "while :; do date +%s.%N >> /root/ticks; sleep 0.2; done"


def _pid_of(backend: QemuBackend, instance_id: str) -> int:
    pid = backend._instances[instance_id].pid
    assert pid is not None
    return pid


async def test_boot_from_boot_snapshot_runs_a_command(booted_vm: InstanceInfo) -> None:
    assert booted_vm.state is InstanceState.RUNNING
    assert (await sh(booted_vm, "echo hello; id -u")).split() == ["hello", "0"]


async def test_guest_clock_within_a_second_after_restore(booted_vm: InstanceInfo) -> None:
    before = time.time()
    guest_now = float(await sh(booted_vm, "date +%s.%N"))
    after = time.time()
    assert before - 1.0 <= guest_now <= after + 1.0


async def test_stats_report_the_qemu_process(
    qemu_backend: QemuBackend, booted_vm: InstanceInfo
) -> None:
    stats = await qemu_backend.stats(booted_vm.id)
    assert stats.rss_mb > 50
    assert stats.cpu_seconds > 0
    assert stats.uptime_seconds > 0


async def test_expose_port_forwards_a_guest_service(
    qemu_backend: QemuBackend, booted_vm: InstanceInfo
) -> None:
    await sh(booted_vm, "mkdir -p /srv/www && echo served > /srv/www/index.html")
    await sh(booted_vm, "/bin/busybox httpd -p 0.0.0.0:8000 -h /srv/www")
    host_port = await qemu_backend.expose_port(booted_vm.id, 8000)
    assert await qemu_backend.expose_port(booted_vm.id, 8000) == host_port
    reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
    writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert b"served" in body
    assert (await qemu_backend.get_instance(booted_vm.id)).exposed_ports == {8000: host_port}


async def test_branches_share_file_and_live_tmux_session(clones: list[InstanceInfo]) -> None:
    assert len({c.ssh.port for c in clones}) == 2
    probe = "cat /root/marker; tmux ls -F '#S'; cat /root/counter; sleep 1; cat /root/counter"
    for out in await asyncio.gather(*(sh(c, probe) for c in clones)):
        marker, session, first, second = out.split()
        assert marker == "from-before-save"
        assert session == "work"
        assert int(second) > int(first)  # the loop saved mid-run still runs in every clone


async def test_clones_differ_in_random_bytes_and_have_the_host_clock(
    clones: list[InstanceInfo],
) -> None:
    probe = "date +%s.%N; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
    before = time.time()
    outs = await asyncio.gather(*(sh(c, probe) for c in clones))
    after = time.time()
    (clock_a, random_a), (clock_b, random_b) = (o.split() for o in outs)
    assert random_a != random_b
    for clock in (clock_a, clock_b):
        assert before - 1.0 <= float(clock) <= after + 1.0


async def test_pause_stops_the_guest_and_resume_continues(
    qemu_backend: QemuBackend, clones: list[InstanceInfo]
) -> None:
    vm = clones[0]
    # Each tick logs the guest's wall clock; while paused no tick can happen, and after resume
    # the clock is stepped to host time, so the pause shows up as one long gap in the log.
    await sh(vm, f"tmux new-session -d -s tick '{TICKS}'; sleep 1; test -s /root/ticks")
    assert (await qemu_backend.pause(vm.id)).state is InstanceState.PAUSED
    with pytest.raises(InvalidState):
        await qemu_backend.pause(vm.id)
    await asyncio.sleep(4.0)
    assert (await qemu_backend.resume(vm.id)).state is InstanceState.RUNNING
    ticks = [float(t) for t in (await sh(vm, "sleep 1; cat /root/ticks")).split()]
    longest, at = max((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(ticks)))
    assert longest >= 3.5  # no tick while paused
    assert len(ticks) - (at + 1) >= 2  # and ticking again after resume
    await sh(vm, "tmux kill-session -t tick")


async def test_reboot_comes_back_with_its_disk(
    qemu_backend: QemuBackend, clones: list[InstanceInfo]
) -> None:
    vm = clones[0]
    await sh(vm, "echo kept > /root/before-reboot; sync")
    info = await qemu_backend.reboot(vm.id)
    assert info.state is InstanceState.RUNNING
    out = await sh(vm, "cat /root/before-reboot; cut -d' ' -f1 /proc/uptime; tmux ls | wc -l")
    kept, uptime, sessions = out.split()
    assert kept == "kept"  # the disk survived
    assert float(uptime) < 120 and sessions == "0"  # but the guest started afresh


async def test_stop_then_wake_boots_the_same_disk(
    qemu_backend: QemuBackend, clones: list[InstanceInfo]
) -> None:
    vm = clones[0]
    pid = _pid_of(qemu_backend, vm.id)
    assert (await qemu_backend.stop(vm.id)).state is InstanceState.STOPPED
    assert not pid_alive(pid)
    assert (await qemu_backend.stats(vm.id)).rss_mb == 0
    info = await qemu_backend.wake(vm.id)  # nothing in memory to restore: a cold boot
    assert info.state is InstanceState.RUNNING
    assert info.ssh.port == vm.ssh.port
    assert (await sh(info, "cat /root/before-reboot")).strip() == "kept"


async def test_delete_leaves_no_process_or_file(
    qemu_backend: QemuBackend, qemu_config: QemuConfig, clones: list[InstanceInfo]
) -> None:
    vm = clones[1]
    pid = _pid_of(qemu_backend, vm.id)
    top = Path(qemu_backend._instances[vm.id].chain[0])
    await qemu_backend.delete(vm.id)
    assert not pid_alive(pid)
    assert not (Path(qemu_config.state_dir) / "instances" / vm.id).exists()
    assert not top.exists()
    with pytest.raises(NotFound):
        await qemu_backend.get_instance(vm.id)


async def test_restarted_service_readopts_running_vm(
    qemu_backend: QemuBackend, qemu_config: QemuConfig, booted_vm: InstanceInfo
) -> None:
    pid = _pid_of(qemu_backend, booted_vm.id)
    await qemu_backend.close()  # the old service goes away; its VMs keep running
    restarted = QemuBackend(qemu_config)
    await restarted.start()
    try:
        info = await restarted.get_instance(booted_vm.id)
        assert info.state is InstanceState.RUNNING
        assert _pid_of(restarted, booted_vm.id) == pid
        assert (await sh(info, "cat /root/marker")).strip() == "from-before-save"
        await restarted.pause(booted_vm.id)  # QMP works through the adopted connection
        await restarted.resume(booted_vm.id)
    finally:
        await restarted.close()
        await qemu_backend.start()  # hand the VMs back to the session's backend


async def test_interrupted_save_leaves_no_bootable_snapshot(
    qemu_backend: QemuBackend, qemu_config: QemuConfig, booted_vm: InstanceInfo
) -> None:
    snapshots = Path(qemu_config.state_dir) / "snapshots"
    # A crash while the state file was being written leaves only a .tmp directory ...
    leftover = snapshots / "crashed.tmp"
    leftover.mkdir()
    (leftover / "state").write_bytes(os.urandom(4096))
    # ... and a save cancelled in the middle must not publish anything either.
    task = asyncio.create_task(qemu_backend.save(booted_vm.id, "cancelled"))
    await asyncio.sleep(0.05)
    task.cancel()
    completed = False
    try:
        await task
        completed = True  # it won the race: then it must be complete and usable
    except asyncio.CancelledError:
        pass
    # Whatever point the cancel hit, the layer the VM now writes to is still accounted for.
    live = await live_chain(qemu_backend._machines[booted_vm.id], [])
    qemu_backend._gc_disks()
    assert live and all(Path(p).exists() for p in live)
    await qemu_backend.close()
    await qemu_backend.start()  # what a restarted service sees
    ids = {s.id for s in await qemu_backend.list_snapshots()}
    assert "crashed" not in ids and not leftover.exists()
    assert ("cancelled" in ids) == completed
    assert not list(snapshots.glob("*.tmp"))
    assert (await sh(booted_vm, "cat /root/marker")).strip() == "from-before-save"
    if completed:
        await qemu_backend.delete_snapshot("cancelled")


async def test_deleting_parent_snapshot_keeps_child_working_through_standby(
    qemu_backend: QemuBackend, qemu_config: QemuConfig, booted_vm: InstanceInfo,
    saved_snapshot: SnapshotInfo,
) -> None:  # fmt: skip
    await sh(booted_vm, "echo second > /root/second")
    parent = await qemu_backend.save(booted_vm.id, "snap-parent")
    assert parent.parent_snapshot_id == saved_snapshot.id
    child = await qemu_backend.boot(parent.id, "vm-child")
    try:
        await qemu_backend.delete_snapshot(parent.id)
        with pytest.raises(NotFound):
            await qemu_backend.get_snapshot(parent.id)
        assert not (Path(qemu_config.state_dir) / "snapshots" / parent.id).exists()
        assert (await sh(child, "cat /root/second")).strip() == "second"
        await sh(child, "echo through-standby > /root/standby; sync")
        # standby ends QEMU; wake reopens the whole disk chain, so a missing layer would show.
        pid = _pid_of(qemu_backend, child.id)
        info = await qemu_backend.standby(child.id)
        assert info.state is InstanceState.STANDBY
        assert not pid_alive(pid)
        info = await qemu_backend.wake(child.id)
        assert info.state is InstanceState.RUNNING
        assert (await sh(info, "cat /root/standby")).strip() == "through-standby"
        assert (await sh(info, "cat /root/marker")).strip() == "from-before-save"
    finally:
        await qemu_backend.delete(child.id)
    # Nothing of the deleted snapshot or the child remains in the disk pool.
    used = {p for r in qemu_backend._instances.values() for p in r.chain}
    used |= {p for s in qemu_backend._snapshots.values() for p in s.chain}
    pool = {str(p) for p in (Path(qemu_config.state_dir) / "disks").iterdir()}
    assert pool <= used


async def test_a_guest_flooding_its_console_does_not_fill_the_host_disk(
    qemu_backend: QemuBackend, booted_vm: InstanceInfo
) -> None:
    console = qemu_backend._dir(qemu_backend._instances[booted_vm.id]) / "console.log"
    await sh(booted_vm, "head -c 1500000 /dev/zero | tr '\\0' x > /dev/ttyS0", timeout=300)
    deadline = time.monotonic() + 30
    while console.stat().st_size > CONSOLE_LIMIT:
        assert time.monotonic() < deadline, "the console was never cut back"
        await asyncio.sleep(0.5)
    kept = console.read_bytes()
    assert kept.startswith(b"[earlier console output cut]") and kept.endswith(b"x")


async def test_many_saves_keep_the_disk_chain_short_and_every_snapshot_whole(
    qemu_backend: QemuBackend, boot_snapshot_id: str
) -> None:
    vm = await qemu_backend.boot(boot_snapshot_id, "vm-chain")
    saves: list[SnapshotInfo] = []
    try:
        for n in range(FLATTEN_DEPTH + 4):
            await sh(vm, f"echo layer-{n} > /root/layer-{n}; sync")
            saves.append(await qemu_backend.save(vm.id, f"snap-chain-{n}"))
        deadline = time.monotonic() + 120
        while vm.id in qemu_backend._flattening:  # the stream runs in the background
            assert time.monotonic() < deadline, "the stream never finished"
            await asyncio.sleep(0.1)
        live = await live_chain(qemu_backend._machines[vm.id], [])
        assert len(live) <= FLATTEN_DEPTH, live
        assert qemu_backend._instances[vm.id].chain == live  # recorded as QEMU has it
        expected = "".join(f"layer-{n}\n" for n in range(FLATTEN_DEPTH + 4))
        files = " ".join(f"/root/layer-{n}" for n in range(FLATTEN_DEPTH + 4))
        assert await sh(vm, f"cat {files}") == expected
        # the snapshots from before and after the stream still hold their own moment
        for n in (0, FLATTEN_DEPTH - 1, FLATTEN_DEPTH + 3):
            clone = await qemu_backend.boot(saves[n].id, f"vm-chain-clone-{n}")
            try:
                present = await sh(clone, "ls /root | grep -c '^layer-'")
                assert int(present) == n + 1
                assert (await sh(clone, f"cat /root/layer-{n}")).strip() == f"layer-{n}"
            finally:
                await qemu_backend.delete(clone.id)
        saves.append(await qemu_backend.save(vm.id, "snap-chain-after"))
        assert len(qemu_backend._snapshots[saves[-1].id].chain) <= FLATTEN_DEPTH
    finally:
        await qemu_backend.delete(vm.id)
        for snapshot in saves:
            await qemu_backend.delete_snapshot(snapshot.id)


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _assert_confined(pid: int) -> None:
    """Seccomp-filtered, no_new_privs, and (under a root test run) every uid and gid that of
    the unprivileged QEMU user, with no capability left."""
    status = _proc_status(pid)
    assert status["Seccomp"] == "2", status  # a filter (mode 2), not off
    assert status["NoNewPrivs"] == "1", status
    if os.geteuid() == 0:
        import pwd

        from devbox_service.backends.qemu.confine import qemu_user

        user = pwd.getpwnam(qemu_user(quiet=True))
        assert user.pw_uid != 0
        assert status["Uid"].split() == [str(user.pw_uid)] * 4, status
        assert status["Gid"].split() == [str(user.pw_gid)] * 4, status
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    else:
        assert status["Uid"].split() == [str(os.geteuid())] * 4, status


async def test_a_sandboxed_guest_as_the_unprivileged_user_boots_saves_and_restores(
    qemu_backend: QemuBackend, boot_snapshot_id: str
) -> None:
    vm = await qemu_backend.boot(boot_snapshot_id, "vm-confined")
    clone: InstanceInfo | None = None
    try:
        _assert_confined(_pid_of(qemu_backend, vm.id))
        await sh(vm, "echo confined > /root/confined; sync")
        # a save: QEMU (no longer root) writes the state to an fd and takes the new disk
        # layer as an fd, the state dir being closed to it
        snap = await qemu_backend.save(vm.id, "snap-confined")
        await sh(vm, "echo after > /root/confined-after; sync")  # the new layer is writable
        clone = await qemu_backend.boot(snap.id, "vm-confined-clone")
        _assert_confined(_pid_of(qemu_backend, clone.id))
        assert (await sh(clone, "cat /root/confined")).strip() == "confined"
        assert (await sh(clone, "test -e /root/confined-after || echo absent")).strip() == "absent"
        chain = qemu_backend._instances[vm.id].chain
        assert all(p.startswith("/") and "fdset" not in p for p in chain), chain
        assert await live_chain(qemu_backend._machines[vm.id], []) == chain
    finally:
        if clone is not None:
            await qemu_backend.delete(clone.id)
        await qemu_backend.delete(vm.id)
        with contextlib.suppress(NotFound):
            await qemu_backend.delete_snapshot("snap-confined")
