"""Template figures, against `devbox-service serve` in its own process, read as a client
reads them (the SSE stream over real HTTP):

- `tpl.cached_rebuild`: a build request of a fully cached template until `completed`;
- `tpl.step_overhead.p50`: per step of `true`, what a step costs beyond its command (the
  shell it runs in, the save of memory and disk, the events);
- `tpl.event_latency.p95`: a line the guest writes until the SSE client has it (guest
  timestamps, put on the host's clock with an offset measured over SSH, +-RTT/2);
- `tpl.instant_to_ready.p50`: an instant-devbox request until the devbox is ready.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

from bench.common import Served, merge_results, percentile, print_table, served

TARGETS = {
    "tpl.cached_rebuild": 1.0,
    "tpl.step_overhead.p50": 0.4,
    "tpl.event_latency.p95": 0.3,
    "tpl.instant_to_ready.p50": 1.2,
}
RUNS = 5
TRIVIAL_STEPS = 8
LINES = 30
TERMINAL = {"completed", "cancelled", "error", "step_failed"}


def create(service: Served, name: str, steps: list[str]) -> str:
    yaml = f"name: {name}\nsteps:\n" + "".join(f"  - run: {json.dumps(s)}\n" for s in steps)
    body = {"name": name, "yaml": yaml, "baseSnapshotOption": service.default_image()}
    created = service.http.post("/api/templates", json=body, headers=service.auth)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def build(service: Served, template_id: str) -> list[tuple[float, dict[str, Any]]]:
    """Start a run and read its events to the end: (host receive time, event)."""
    started = service.http.post(f"/api/templates/{template_id}/cache", headers=service.auth)
    run_id = started.json()["run_id"]
    received: list[tuple[float, dict[str, Any]]] = []
    with service.http.stream(
        "GET",
        f"/api/templates/{template_id}/events",
        params={"run_id": run_id},
        headers={**service.auth, "Accept": "text/event-stream"},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                received.append((time.time(), event))
                if event["type"] in TERMINAL:
                    break
    assert received[-1][1]["type"] == "completed", received[-1]
    service.http.delete(f"/api/devboxes/{received[-1][1]['instanceId']}", headers=service.auth)
    return received


def cached_rebuilds(service: Served) -> list[float]:
    template_id = create(service, "cached", ["echo one > /root/one", "echo two > /root/two"])
    build(service, template_id)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        build(service, template_id)
        times.append(time.perf_counter() - started)
    return times


def step_overheads(service: Served) -> list[float]:
    template_id = create(service, "trivial", [f"true {n}" for n in range(TRIVIAL_STEPS)])
    received = build(service, template_id)
    done = [t for t, e in received if e["type"] == "step_completed"]
    first_start = next(t for t, e in received if e["type"] == "step_started")
    return [b - a for a, b in zip([first_start, *done[:-1]], done, strict=True)]


def guest_clock_offset(service: Served, devbox_id: str) -> float:
    """guest clock - host clock, from the sample with the shortest round trip."""
    client = service.gateway(devbox_id)
    best: tuple[float, float] | None = None
    try:
        for _ in range(8):
            sent = time.time()
            _, stdout, _ = client.exec_command("date +%s.%N")
            guest_time = float(stdout.read().decode())
            back = time.time()
            sample = (back - sent, guest_time - (sent + back) / 2)
            best = sample if best is None or sample[0] < best[0] else best
    finally:
        client.close()
    assert best is not None
    return best[1]


def event_latencies(service: Served) -> list[float]:
    printer = f'for i in $(seq {LINES}); do echo "T $(date +%s.%N)"; sleep 0.1; done'
    template_id = create(service, "latency", ["sleep 6", printer])
    offset: list[float] = []

    def measure() -> None:
        """While the first step sleeps: find the build devbox and read its clock."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            devboxes = service.http.get("/api/devboxes", headers=service.auth).json()["data"]
            building = [
                d
                for d in devboxes
                if d["metadata"].get("template_id") == template_id and d["status"] == "ready"
            ]
            if building:
                offset.append(guest_clock_offset(service, building[0]["id"]))
                return
            time.sleep(0.1)

    probe = threading.Thread(target=measure)
    probe.start()
    received = build(service, template_id)
    probe.join()
    latencies = []
    for at, event in received:
        if event["type"] != "output":
            continue
        for line in event["content"].splitlines():
            if line.startswith("T "):
                latencies.append(at - (float(line[2:]) - offset[0]))
    return latencies


def instant_starts(service: Served) -> list[float]:
    template_id = create(service, "instant", ["echo ready > /root/instant"])
    build(service, template_id)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        devbox_id = service.http.post(
            f"/api/templates/{template_id}/instant-devbox", json={}, headers=service.auth
        ).json()["id"]
        while (
            service.http.get(f"/api/devboxes/{devbox_id}", headers=service.auth).json()["status"]
            != "ready"
        ):
            time.sleep(0.02)
        times.append(time.perf_counter() - started)
        service.http.delete(f"/api/devboxes/{devbox_id}", headers=service.auth)
    return times


def main() -> None:
    with served() as service:
        rebuilds = cached_rebuilds(service)
        overheads = step_overheads(service)
        latencies = event_latencies(service)
        instants = instant_starts(service)
    figures = {
        "tpl.cached_rebuild": statistics.median(rebuilds),
        "tpl.step_overhead.p50": statistics.median(overheads),
        "tpl.step_overhead.p95": percentile(overheads, 0.95),
        "tpl.event_latency.p50": statistics.median(latencies),
        "tpl.event_latency.p95": percentile(latencies, 0.95),
        "tpl.instant_to_ready.p50": statistics.median(instants),
    }
    merge_results(figures)
    print_table(figures, TARGETS)


if __name__ == "__main__":
    main()
