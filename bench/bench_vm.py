"""VM primitives of the embedded QEMU backend: cold boot, save, restore, branch, pause, RSS.

Run: `.venv/bin/python -m bench.bench_vm` (or `python bench/bench_vm.py`). Uses the image cache
in ~/.cache/devbox-service (built first if missing) and a throwaway state dir. The bare recipe
(plain QEMU -incoming, raw QMP, wait for the SSH banner: no driver code) is timed in the same
run, so `vm.overhead_ratio` compares like with like on whatever load the host has.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import merge_results, percentile, print_table
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.confine import sandbox
from devbox_service.backends.qemu.driver import QemuBackend
from devbox_service.backends.qemu.guest_shell import wait_ssh_banner
from devbox_service.backends.qemu.machine import LaunchSpec, Machine, command_line
from devbox_service.backends.qemu.util import free_port
from devbox_service.settings import load_settings

CACHE_DIR = load_settings().cache_dir  # DEVBOX_CACHE_DIR, else the XDG cache directory
RUNS = int(os.environ.get("BENCH_VM_RUNS", "5"))

TARGETS = {
    "vm.restore_to_ready.p50": 1.0,
    "vm.save_pause.p50": 0.15,
    "vm.branch_all_ready.n4": 4.0,
    "vm.pause.p50": 0.02,
    "vm.resume.p50": 0.02,
    "vm.overhead_ratio": 1.2,
}


def p50(values: list[float]) -> float:
    return percentile(values, 0.5)


async def qmp_raw(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    await reader.readline()  # greeting
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    await reader.readline()
    return reader, writer


async def qmp_cmd(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    cmd: str,
    arguments: Mapping[str, object] | None = None,
) -> dict:  # type: ignore[type-arg]
    reader, writer = conn
    message: dict[str, object] = {"execute": cmd}
    if arguments is not None:
        message["arguments"] = arguments
    writer.write(json.dumps(message).encode() + b"\n")
    while True:
        msg = json.loads(await reader.readline())
        if "event" not in msg:
            return msg  # type: ignore[no-any-return]


async def bare_restore(backend: QemuBackend, boot_id: str, work: Path) -> float:
    """Restore exactly as the recipe says, without the driver: qemu-img, -incoming, cont, banner."""
    snap = backend._snapshot(boot_id)
    d = Path(tempfile.mkdtemp(dir=work, prefix="bare"))
    img = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", snap.chain[0], "-F", "qcow2",
        str(d / "top.qcow2"),
    )  # fmt: skip
    assert await img.wait() == 0
    ls = LaunchSpec(
        name="bare", dir=str(d), machine=snap.machine, accel=snap.accel, spec=snap.spec,
        kernel=snap.kernel, initrd=snap.initrd, disk=str(d / "top.qcow2"),
        ssh_port=free_port(), tsc_khz=backend._launch_spec("x", d, snap.accel, "", "", "",
                                                           snap.machine).tsc_khz,
    )  # fmt: skip
    incoming = f"exec:cat {snap.state_file}"
    argv = command_line("qemu-system-x86_64", ls, incoming, snap.ram)
    # the bare recipe reads its state through `exec:cat`: QEMU must be allowed to spawn it
    argv[argv.index("-sandbox") + 1] = sandbox(spawn=True, dropping_user=False)
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        while not (d / "qmp.sock").exists():
            await asyncio.sleep(0.005)
        conn = await qmp_raw(str(d / "qmp.sock"))
        if snap.ram is not None:  # a memory template: the state is read once the capability is on
            caps = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
            await qmp_cmd(conn, "migrate-set-capabilities", caps)
            await qmp_cmd(conn, "migrate-incoming", {"uri": incoming})
        while (await qmp_cmd(conn, "query-status"))["return"]["status"] == "inmigrate":
            await asyncio.sleep(0.005)
        await qmp_cmd(conn, "cont")
        await wait_ssh_banner(ls.ssh_port, 60)
        return time.monotonic() - t0
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(d, ignore_errors=True)


async def cold_boot(backend: QemuBackend, work: Path) -> float:
    """Kernel to SSH banner from the base image (what the boot snapshot saves us)."""
    img = backend._image
    assert img is not None and backend._boot is not None
    d = Path(tempfile.mkdtemp(dir=work, prefix="cold"))
    await backend._create_overlay(d / "top.qcow2", img.disk)
    ls = backend._launch_spec("cold", d, backend._boot.accel, img.kernel, img.initrd,
                              str(d / "top.qcow2"))  # fmt: skip
    machine = Machine("qemu-system-x86_64", ls)
    t0 = time.monotonic()
    try:
        await machine.launch()
        await wait_ssh_banner(ls.ssh_port, 180)
        return time.monotonic() - t0
    finally:
        await machine.shutdown(graceful=False)
        shutil.rmtree(d, ignore_errors=True)


async def main() -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-vm-"))
    # as the service runs it: with its default warm pool
    pool = load_settings().vm_warm_pool
    config = QemuConfig(state_dir=str(work / "state"), cache_dir=CACHE_DIR, warm_pool=pool)
    backend = QemuBackend(config)
    await backend.start()
    figures: dict[str, float] = {}
    try:
        image = await backend.ensure_image(progress=print)
        boot_id = image.boot_snapshot_id

        bare: list[float] = []
        restore: list[float] = []
        for i in range(RUNS):  # interleaved, so both see the same page cache and host load
            bare.append(await bare_restore(backend, boot_id, work))
            t0 = time.monotonic()
            await backend.boot(boot_id, f"restore{i}")
            restore.append(time.monotonic() - t0)
            await backend.delete(f"restore{i}")
        figures["vm.bare_restore_to_ready.p50"] = p50(bare)
        figures["vm.restore_to_ready.p50"] = p50(restore)
        figures["vm.overhead_ratio"] = p50(restore) / p50(bare)

        vm = await backend.boot(boot_id, "bench")
        pauses, resumes, saves = [], [], []
        for _ in range(20):
            t0 = time.perf_counter()
            await backend.pause(vm.id)
            t1 = time.perf_counter()
            await backend.resume(vm.id)
            pauses.append(t1 - t0)
            resumes.append(time.perf_counter() - t1)
        for i in range(RUNS):
            await backend.save(vm.id, f"save{i}")
            saves.append(backend.last_save_pause)
        for i in range(RUNS):
            await backend.delete_snapshot(f"save{i}")
        await backend.delete(vm.id)
        figures["vm.pause.p50"] = p50(pauses)
        figures["vm.resume.p50"] = p50(resumes)
        figures["vm.save_pause.p50"] = p50(saves)

        rss: list[float] = []
        for n in (1, 2, 4):
            ids = [f"branch{n}-{i}" for i in range(n)]
            t0 = time.monotonic()
            await backend.branch(boot_id, ids)
            figures[f"vm.branch_all_ready.n{n}"] = time.monotonic() - t0
            if n == 4:
                await asyncio.sleep(2)
                rss = [(await backend.stats(iid)).rss_mb for iid in ids]
            for iid in ids:
                await backend.delete(iid)
        figures["vm.rss_mb.median"] = statistics.median(rss)

        figures["vm.cold_boot.p50"] = p50([await cold_boot(backend, work) for _ in range(2)])
        figures["vm.host_loadavg_1m"] = os.getloadavg()[0]
    finally:
        for inst in await backend.list_instances():
            await backend.delete(inst.id)
        await backend.close()
        shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    results = asyncio.run(main())
    merge_results(results)
    print_table(results, TARGETS)
