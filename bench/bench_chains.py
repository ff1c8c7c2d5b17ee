"""Disks after many saves: restore time and disk use once one devbox has been saved 50 times.

`vm.restore_after_50_saves.p50` (seconds from create to `ready` from the 50th save of one
devbox) against `vm.restore_fresh.p50` (the same from its first save), their ratio
`vm.restore_after_50_saves.ratio` (target <= 1.2), the disk chain depth of the 50th save
(`vm.chain_depth_after_50_saves`), the save time (`vm.save_after_50.p50`) and the disk the
service's VM files use (`vm.disk_after_50_saves_mb`).

Run: `.venv/bin/python -m bench.bench_chains`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from bench.common import Served, merge_results, percentile, print_table, served

SAVES = 50
RESTORES = 5
TARGETS = {"vm.restore_after_50_saves.ratio": 1.2}


def restore_times(service: Served, snapshot_id: str) -> list[float]:
    times = []
    for _ in range(RESTORES):
        started = time.perf_counter()
        devbox_id = service.start_devbox("restored", snapshot_id)
        times.append(time.perf_counter() - started)
        service.http.delete(f"/api/devboxes/{devbox_id}", headers=service.auth)
    return times


def disk_mb(data_dir: Path) -> float:
    total = 0
    for path in (data_dir / "vms").rglob("*"):
        if path.is_file():
            total += os.stat(path).st_blocks * 512
    return total / 2**20


def chain_depth(data_dir: Path, snapshot_id: str) -> int:
    manifest = json.loads(
        (data_dir / "vms" / "snapshots" / snapshot_id / "manifest.json").read_text()
    )
    return len(manifest["chain"])


def write_some_data(service: Served, devbox_id: str, n: int) -> None:
    """A little new data in every layer, as a working agent leaves."""
    if n == 0:
        service.http.post(
            f"/api/devboxes/{devbox_id}/tmux/sessions", json={"name": "w"}, headers=service.auth
        ).raise_for_status()
    command = f"head -c 256k /dev/urandom > /root/f{n}; sync"
    service.http.post(
        f"/api/devboxes/{devbox_id}/tmux/send-keys",
        json={"target": {"session": "w"}, "keys": command, "enter": True},
        headers=service.auth,
    ).raise_for_status()


def main() -> None:
    with served() as service:
        devbox_id = service.start_devbox("saved-often")
        saves: list[str] = []
        durations: list[float] = []
        for n in range(SAVES):
            write_some_data(service, devbox_id, n)
            started = time.perf_counter()
            saved = service.http.post(
                f"/api/devboxes/{devbox_id}/save", json={"name": f"s{n}"}, headers=service.auth
            )
            durations.append(time.perf_counter() - started)
            saved.raise_for_status()
            saves.append(saved.json()["id"])
        data_dir = service.data_dir
        fresh = restore_times(service, saves[0])
        late = restore_times(service, saves[-1])
        figures = {
            "vm.restore_fresh.p50": statistics.median(fresh),
            "vm.restore_after_50_saves.p50": statistics.median(late),
            "vm.restore_after_50_saves.ratio": statistics.median(late) / statistics.median(fresh),
            "vm.chain_depth_after_50_saves": float(chain_depth(data_dir, saves[-1])),
            "vm.save_first_10.p50": percentile(durations[:10], 0.5),
            "vm.save_after_50.p50": percentile(durations[-10:], 0.5),
            "vm.disk_after_50_saves_mb": disk_mb(data_dir),
        }
    merge_results(figures)
    print_table(figures, TARGETS)


if __name__ == "__main__":
    main()
