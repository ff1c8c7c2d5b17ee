"""tmux latency through the real HTTP API: send-keys + snapshot round trip, and stream latency.

Run: `.venv/bin/python -m bench.bench_tmux`. Starts the app on a local port (uvicorn, QEMU
backend, a temporary data dir), creates a devbox, measures, prints a table and merges
`tmux.roundtrip.p50/p95` and `tmux.stream_latency.p95` (seconds) into bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import uvicorn

from bench.common import free_port, merge_results, percentile, print_table
from devbox_service.app import create_app
from devbox_service.settings import load_settings

TARGETS = {"tmux.roundtrip.p50": 0.15, "tmux.stream_latency.p95": 0.3}


async def wait_ready(client: httpx.AsyncClient, headers: dict[str, str], devbox_id: str) -> None:
    deadline = time.monotonic() + 600
    while (await client.get(f"/api/devboxes/{devbox_id}", headers=headers)).json()[
        "status"
    ] != "ready":
        assert time.monotonic() < deadline, "devbox never became ready"
        await asyncio.sleep(0.5)


async def measure(runs: int, data_dir: Path) -> dict[str, float]:
    settings = load_settings(
        environ={}, data_dir=str(data_dir), cache_dir=load_settings().cache_dir, vm_backend="qemu"
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            while not server.started:
                await asyncio.sleep(0.1)
            while (await client.get("/health/ready")).status_code != 200:
                await asyncio.sleep(1)
            headers = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
            images = (await client.get("/api/images", headers=headers)).json()["data"]
            image = next(i for i in images if i["default"])
            created = await client.post(
                "/api/devboxes", params={"snapshot_id": image["id"]}, json={}, headers=headers
            )
            devbox_id = created.json()["id"]
            await wait_ready(client, headers, devbox_id)
            try:
                return await _measure(client, headers, devbox_id, app, runs)
            finally:
                await client.delete(f"/api/devboxes/{devbox_id}", headers=headers)
    finally:
        server.should_exit = True
        await serving


async def _measure(
    client: httpx.AsyncClient, headers: dict[str, str], devbox_id: str, app: Any, runs: int
) -> dict[str, float]:
    base = f"/api/devboxes/{devbox_id}/tmux"
    await client.post(f"{base}/sessions", json={"name": "bench"}, headers=headers)
    sent = await client.post(
        f"{base}/send-keys", json={"target": {"session": "bench"}, "keys": ""}, headers=headers
    )
    pane = sent.json()["resolved_pane_id"]
    await client.post(f"{base}/panes/{pane}/wait", json={"pattern": r"#\s*$"}, headers=headers)
    roundtrips: list[float] = []
    for i in range(runs + 3):
        started = time.perf_counter()
        response = await client.post(
            f"{base}/send-keys",
            json={"pane_id": pane, "keys": f"echo r{i}", "enter": True},
            headers=headers,
        )
        assert response.json()["ok"], response.text
        await client.get(f"{base}/panes/{pane}/snapshot", params={"lines": 50}, headers=headers)
        if i >= 3:  # the first calls open connections
            roundtrips.append(time.perf_counter() - started)

    instance = await app.state.services.backend.get_instance(devbox_id)
    ssh = instance.ssh
    latencies: list[float] = []
    async with asyncssh.connect(
        ssh.host,
        ssh.port,
        username=ssh.username,
        client_keys=[ssh.private_key_path],
        known_hosts=None,
    ) as connection:
        tty = (await connection.run(f"tmux display -p -t {pane} '#{{pane_tty}}'")).stdout
        tty = str(tty).strip()
        writer = await connection.create_process(f"cat > {tty}")
        async with client.stream(
            "GET", f"{base}/panes/{pane}/stream", params={"debounce_ms": 20}, headers=headers
        ) as stream:
            lines = stream.aiter_lines()
            marker: str | None = None
            written = 0.0
            count = 0
            async for line in lines:
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if marker is not None and marker in event["content"]:
                    latencies.append(time.perf_counter() - written)
                    count += 1
                if count >= min(runs, 20):
                    break
                if marker is None or marker in event["content"]:
                    await asyncio.sleep(0.2)
                    marker = f"m{count}-{time.time_ns()}"
                    written = time.perf_counter()
                    writer.stdin.write(marker + "\n")
        writer.close()
    return {
        "tmux.roundtrip.p50": statistics.median(roundtrips),
        "tmux.roundtrip.p95": percentile(roundtrips, 0.95),
        "tmux.stream_latency.p50": statistics.median(latencies),
        "tmux.stream_latency.p95": percentile(latencies, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tmux-") as tmp:
        results = asyncio.run(measure(args.runs, Path(tmp)))
    merge_results(results)
    print_table(results, TARGETS)


if __name__ == "__main__":
    main()
