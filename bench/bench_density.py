"""Density: what idle devboxes cost this host, against `devbox-service serve` in its own process.

- `vm.idle_cpu_pct`: four devboxes from the default image idle for 30 s. The CPU their QEMU
  processes and the service used, less what the service used idle for 30 s without them, per
  devbox, in percent of one core. (Process accounting, not /proc/stat: on a virtual
  development host the whole-host figure carries steal time and other tenants' noise.)
- `vm.clone_pss_mb`: the mean proportional memory (PSS) of those four QEMU processes at the
  end: pages the devboxes share (the image's memory template) count in part.
- `vm.clone_pss_mb.branch`: the same for four branches of one running devbox (a saved
  snapshot: its memory is loaded, not shared), for comparison.
- `vm.capacity_idle`: how many idle devboxes of the default size the service admits on this
  host: admission's own arithmetic (host memory less the reserve and the warm pool, over
  guest memory plus the per-VM overhead), printed in full.

Run: `.venv/bin/python -m bench.bench_density`. Merges `vm.*` into bench/results/latest.json.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import msgspec

from bench.common import Served, merge_results, print_table, served
from devbox_service.backends.qemu.util import proc_pss_kb, proc_usage
from devbox_service.settings import load_settings

TARGETS = {"vm.idle_cpu_pct": 1.0, "vm.clone_pss_mb": 100.0}
IDLE_SECONDS = 30.0
CLONES = 4


def service_pid(service: Served) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if f"DEVBOX_DATA_DIR={service.data_dir}".encode() in environ.split(b"\0"):
                return int(proc.name)
    raise RuntimeError("no service process")


def used_over(pids: list[int], seconds: float) -> float:
    """CPU seconds the processes used together over `seconds`."""
    start = sum(proc_usage(pid)[1] for pid in pids)
    time.sleep(seconds)
    return sum(proc_usage(pid)[1] for pid in pids) - start


def qemu_pid(service: Served, devbox_id: str) -> int:
    manifest = service.data_dir / "vms" / "instances" / devbox_id / "manifest.json"
    return int(msgspec.json.decode(manifest.read_bytes())["pid"])


def pss_mb(pid: int) -> float:
    return proc_pss_kb(pid) / 1024


def mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal")


def main() -> dict[str, float]:
    figures: dict[str, float] = {}
    settings = load_settings()
    with served() as service:
        time.sleep(5)  # the warm pool fills; then the service's own idle cost
        server = service_pid(service)
        baseline = used_over([server], IDLE_SECONDS)
        clones = [service.start_devbox(f"idle-{n}") for n in range(CLONES)]
        time.sleep(5)
        busy = used_over([server, *(qemu_pid(service, d) for d in clones)], IDLE_SECONDS)
        per_devbox = max(0.0, busy - baseline) / IDLE_SECONDS / CLONES * 100
        figures["vm.idle_cpu_pct"] = per_devbox
        figures["vm.clone_pss_mb"] = statistics.mean(pss_mb(qemu_pid(service, d)) for d in clones)
        print(
            f"idle CPU: {busy:.2f} s used with {CLONES} devboxes, {baseline:.2f} s without, "
            f"over {IDLE_SECONDS:.0f} s: {per_devbox:.2f}% of a core each"
        )

        parent = clones[0]
        branched = service.http.post(
            f"/api/devboxes/{parent}/branch", json={"count": CLONES}, headers=service.auth
        )
        branched.raise_for_status()
        children = [str(c["id"]) for c in branched.json()["instances"]]
        for child in children:
            service.wait_ready(child)
        time.sleep(IDLE_SECONDS)
        figures["vm.clone_pss_mb.branch"] = statistics.mean(
            pss_mb(qemu_pid(service, d)) for d in children
        )

        pool = service.http.get("/metrics", headers=service.auth).text
        held = next(
            (
                float(line.split()[-1])
                for line in pool.splitlines()
                if line.startswith("devbox_vm_warm_pool_mb")
            ),
            settings.vm_warm_pool * 35.0,
        )
    total = mem_total_mb()
    per_vm = settings.vm_memory_mb + settings.vm_memory_overhead_mb
    budget = total - settings.host_memory_reserve_mb - held
    figures["vm.capacity_idle"] = float(int(budget // per_vm))
    figures["vm.capacity_by_pss"] = float(
        int((total - settings.host_memory_reserve_mb) // figures["vm.clone_pss_mb"])
    )
    print(
        f"capacity: ({total} MB host - {settings.host_memory_reserve_mb} MB reserve - "
        f"{held:.0f} MB warm pool) / ({settings.vm_memory_mb} MB guest + "
        f"{settings.vm_memory_overhead_mb} MB per-VM overhead) = {budget / per_vm:.1f} "
        f"-> {figures['vm.capacity_idle']:.0f} devboxes admitted"
    )
    print(
        f"by measured PSS ({figures['vm.clone_pss_mb']:.0f} MB each) the memory would hold "
        f"{figures['vm.capacity_by_pss']:.0f}; admission does not count on sharing, because "
        "a guest can write all its memory at any time"
    )
    return figures


if __name__ == "__main__":
    results = main()
    print_table(results, TARGETS)
    merge_results(results)
