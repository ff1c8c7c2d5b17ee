"""Limits and metrics on real VMs, through the service as users run it: the second devbox past
a per-user limit of one is refused before any VM starts, and /metrics counts the real VM."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveService, live_service
from vm_fixtures import is_pooled

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("limits"), LIMIT_DEVBOXES_PER_USER="1") as service:
        yield service


def qemu_processes() -> int:
    """QEMU processes running a VM (the warm pool's waiting ones refill at their own pace)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes()
            count += args.split(b"\0")[0].endswith(b"qemu-system-x86_64") and not is_pooled(args)
    return count


def test_a_limit_refuses_before_a_vm_starts_and_metrics_count_the_vm(live: LiveService) -> None:
    devbox_id = live.create_devbox()["id"]
    images = live.http.get("/api/images", headers=live.headers()).json()["data"]
    before = qemu_processes()
    refused = live.http.post(
        "/api/devboxes", params={"snapshot_id": images[0]["id"]}, headers=live.headers()
    )
    assert refused.status_code == 429 and refused.headers["x-devbox-limit"] == "devboxes_per_user"
    assert qemu_processes() <= before, "no VM was started for the refused request"
    listed = live.http.get("/api/devboxes", headers=live.headers()).json()["data"]
    assert [d["id"] for d in listed] == [devbox_id]

    scraped = live.http.get("/metrics", headers=live.headers())
    assert scraped.status_code == 200
    lines = scraped.text.splitlines()
    assert 'devbox_devboxes{status="ready"} 1' in lines
    assert 'devbox_vm_processes{state="running"} 1' in lines
    memory = next(line for line in lines if line.startswith("devbox_vm_memory_mb "))
    assert float(memory.split()[1]) > 50, "the QEMU process's real resident memory"
