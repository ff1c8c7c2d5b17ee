"""The service killed with SIGKILL at random moments during create, branch, save, pause,
resume, reboot and delete (three rounds each, on real VMs), restarted on the same data each
time: nothing is lost, every accepted devbox ends up running, no snapshot stays pending, each
running devbox has exactly one QEMU process and none is orphaned, and the newest snapshot
boots into a working devbox."""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveService, live_service

pytestmark = pytest.mark.vm

OPERATIONS = ("create", "branch", "save", "pause", "resume", "reboot", "delete")
ROUNDS = 3
KILL_AFTER = (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4)
"""Seconds between sending a request and the SIGKILL: most operations take well under a
second, so the moments are chosen to fall before, during and after them."""
SETTLED = {"ready", "paused", "error"}


def qemu_processes(data_dir: Path) -> Counter[str]:
    """Running QEMU processes of this data directory, by the instance id they run: the pid
    an instance's manifest records, else the `-name` it was launched with. A process of the
    warm pool counts as "pool" (one taken by a boot is named for the pool, not the devbox)."""
    by_pid: dict[int, str] = {}
    for manifest in (data_dir / "vms" / "instances").glob("*/manifest.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(manifest.read_text())
            if record.get("pid"):
                by_pid[int(record["pid"])] = str(record["id"])
    found: Counter[str] = Counter()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            if args[0].endswith("qemu-system-x86_64") and any(str(data_dir) in a for a in args):
                pid = int(cmdline.parent.name)
                name = args[args.index("-name") + 1]
                found[by_pid.get(pid, "pool" if name.startswith("pool-") else name)] += 1
    return found


def devboxes(service: LiveService) -> dict[str, dict[str, Any]]:
    listed = service.http.get("/api/devboxes", headers=service.headers()).json()["data"]
    return {d["id"]: d for d in listed}


def settle(service: LiveService) -> dict[str, dict[str, Any]]:
    """Every devbox once none is between states (a restart finishes what was under way)."""
    deadline = time.monotonic() + 300
    while True:
        found = devboxes(service)
        if all(d["status"] in SETTLED for d in found.values()):
            return found
        assert time.monotonic() < deadline, {i: d["status"] for i, d in found.items()}
        time.sleep(0.3)


def ensure(service: LiveService, devbox_id: str, wanted: str) -> None:
    action = "pause" if wanted == "paused" else "resume"
    answer = service.http.post(f"/api/devboxes/{devbox_id}/{action}", headers=service.headers())
    assert answer.status_code == 200 and answer.json()["status"] == wanted, answer.text


def request_for(service: LiveService, operation: str, target: str, image: str) -> httpx.Request:
    headers = service.headers()
    if operation == "create":
        return service.http.build_request(
            "POST", "/api/devboxes", params={"snapshot_id": image}, json={}, headers=headers
        )
    if operation == "branch":
        return service.http.build_request(
            "POST", f"/api/devboxes/{target}/branch", json={"count": 2}, headers=headers
        )
    if operation == "delete":
        return service.http.build_request("DELETE", f"/api/devboxes/{target}", headers=headers)
    body = {"name": "crash"} if operation == "save" else None
    return service.http.build_request(
        "POST", f"/api/devboxes/{target}/{operation}", json=body, headers=headers
    )


def test_sigkill_at_random_moments_loses_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    data_dir = tmp_path_factory.mktemp("sigkill")
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))  # printed: replayable
    rng = random.Random(seed)
    accepted: set[str] = set()  # devboxes a create or branch answered 200 for
    answered_deletes: set[str] = set()
    deleted: set[str] = set()  # devboxes a delete was sent for (answered, or cut short)
    with live_service(data_dir, keep_devboxes=True) as service:
        base = service.create_devbox()["id"]
        images = service.http.get("/api/images", headers=service.headers()).json()["data"]
        image = next(i["id"] for i in images if i["default"])
    accepted.add(base)
    for operation in OPERATIONS:
        for round_ in range(ROUNDS):
            with live_service(data_dir, keep_devboxes=True) as service:
                found = settle(service)
                assert {i for i, d in found.items() if d["status"] == "error"} == set()
                target = base
                if operation == "delete":
                    target = service.create_devbox()["id"]
                    accepted.add(target)
                if operation == "resume":
                    ensure(service, base, "paused")
                elif found[base]["status"] == "paused":
                    ensure(service, base, "ready")
                request = request_for(service, operation, target, image)
                answers: list[httpx.Response] = []

                def send(request: httpx.Request = request, answers: list[Any] = answers) -> None:
                    with contextlib.suppress(httpx.HTTPError):
                        answers.append(service.http.send(request))

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                time.sleep(rng.choice(KILL_AFTER) * rng.uniform(0.5, 1.5))
                assert service.process is not None
                service.process.kill()
                service.process.wait(30)
                sender.join(30)
            if answers and answers[0].status_code == 200:
                body = answers[0].json()
                if operation == "create":
                    accepted.add(body["id"])
                if operation == "branch":
                    accepted |= {child["id"] for child in body["instances"]}
            if operation == "delete" and (not answers or answers[0].status_code < 300):
                deleted.add(target)  # answered, or cut short: the next start may finish it
            if operation == "delete" and answers and answers[0].status_code < 300:
                answered_deletes.add(target)
            print(
                f"seed {seed}: {operation} #{round_}: answered {[a.status_code for a in answers]}"
            )

    with live_service(data_dir) as service:
        found = settle(service)
        assert accepted - deleted <= set(found), "an accepted devbox was lost"
        assert not answered_deletes & set(found), "a deleted devbox came back"
        assert {i: d["status"] for i, d in found.items() if d["status"] == "error"} == {}
        snapshots = service.http.get("/api/snapshots", headers=service.headers()).json()["data"]
        assert [s["id"] for s in snapshots if s["status"] != "ready"] == []
        processes = qemu_processes(data_dir)
        assert processes.pop("pool", 0) <= 2, "more pooled processes than the pool holds"
        running = {i for i, d in found.items() if d["status"] == "ready"}
        assert {i for i, n in processes.items() if n > 1} == set(), "a devbox with two VMs"
        assert running <= set(processes), "a ready devbox without a VM"
        assert set(processes) <= set(found), f"orphaned VMs: {set(processes) - set(found)}"
        assert snapshots, "no save or branch was answered in any round"
        newest = max(snapshots, key=lambda s: s["created"])
        booted = service.http.post(
            "/api/devboxes",
            params={"snapshot_id": newest["id"]},
            json={"name": "from-newest"},
            headers=service.headers(),
        )
        assert booted.status_code == 200, booted.text
        service.wait_ready(booted.json()["id"])
        assert service.run_in(booted.json()["id"], "echo works") == "works\n"
