"""The service on PostgreSQL, one replica and two, beside SQLite and bare Litestar.

All in one run, on a private PostgreSQL cluster this benchmark starts (fsync on, as a real one):
- `api.read_rps.sqlite` / `.pg` / `.pg_two_replicas` and their `.p99` (seconds): `wrk` on the
  authenticated `GET /api/devboxes/{id}` of a service on SQLite, of one on PostgreSQL, and of
  two replicas on that PostgreSQL at once (one `wrk` each, requests per second summed);
  `api.read_throughput_ratio.pg`: PostgreSQL's over bare Litestar's, measured in turns.
- `api.event_fanout.p95` / `.p50`: from a build event's commit by replica A (the row's
  `created_at`) to its arrival at an SSE client of replica B, for every event of a build.

Run: `.venv/bin/python -m bench.bench_replicas`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

import asyncpg
import httpx

from bench.bench_load import ROUNDS, bare_server, wrk
from bench.common import Served, merge_results, percentile, print_table, served
from devbox_service.db.local_cluster import PostgresServer

BUILD = """
name: fanout
steps:
  - title: tick
    run: for i in $(seq 1 40); do echo tick $i; sleep 0.05; done
  - title: done
    run: echo done
"""
TERMINAL = {"completed", "cancelled", "error", "step_failed"}


def _read_url(service: Served, devbox_id: str) -> str:
    return f"{str(service.http.base_url).rstrip('/')}/api/devboxes/{devbox_id}"


def _reads(url: str, auth: dict[str, str]) -> tuple[float, float]:
    runs = [wrk(url, auth) for _ in range(ROUNDS)]
    return statistics.median(r["rps"] for r in runs), statistics.median(r["p99"] for r in runs)


def _two_at_once(urls: list[str], auth: dict[str, str]) -> tuple[float, float]:
    found: list[dict[str, float]] = []
    threads = [threading.Thread(target=lambda u=u: found.append(wrk(u, auth))) for u in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r["rps"] for r in found), max(r["p99"] for r in found)


def _fanout(a: Served, b: Served, url: str) -> list[float]:
    """Seconds from each build event's commit on A to its arrival on B's stream."""
    body = {"name": "fanout", "yaml": BUILD, "baseSnapshotOption": a.default_image()}
    created = a.http.post("/api/templates", json={**body, "description": None}, headers=a.auth)
    created.raise_for_status()
    template_id = created.json()["id"]
    arrived: dict[int, float] = {}
    run_id = ""
    ready = threading.Event()

    def follow() -> None:
        ready.wait()
        with b.http.stream(
            "GET",
            f"/api/templates/{template_id}/events",
            params={"run_id": run_id},
            headers={**b.auth, "Accept": "text/event-stream"},
            timeout=httpx.Timeout(300, connect=10),
        ) as response:
            seq = 0
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seq += 1
                    arrived[seq] = time.time()
                    if json.loads(line[5:])["type"] in TERMINAL:
                        return

    follower = threading.Thread(target=follow)
    follower.start()
    started = a.http.post(f"/api/templates/{template_id}/cache", headers=a.auth)
    started.raise_for_status()
    run_id = started.json()["run_id"]
    ready.set()
    follower.join(300)

    async def committed() -> dict[int, float]:
        connection = await asyncpg.connect(url)
        try:
            rows = await connection.fetch(
                "SELECT seq, created_at FROM template_run_events WHERE run_id = $1", run_id
            )
        finally:
            await connection.close()
        return {int(r["seq"]): float(r["created_at"]) for r in rows}

    stored = asyncio.run(committed())
    # the first events were stored before the stream opened: only those it saw come live
    opened = min(arrived.values())
    return [arrived[s] - stored[s] for s in arrived if s in stored and stored[s] > opened]


def main() -> None:
    figures: dict[str, float] = {}
    with served() as lite:
        devbox = lite.start_devbox("sqlite")
        figures["api.read_rps.sqlite"], figures["api.read_rps.sqlite.p99"] = _reads(
            _read_url(lite, devbox), lite.auth
        )
    cluster = PostgresServer(fsync=True)
    cluster.start()
    try:
        url = cluster.new_database()
        with served(database_url=url) as a:
            devbox = a.start_devbox("pg")
            a_url = _read_url(a, devbox)
            body = a.http.get(a_url, headers=a.auth).content
            with bare_server(body) as bare:
                turns = [(wrk(a_url, a.auth), wrk(bare, {})) for _ in range(ROUNDS)]
            pg = statistics.median(o["rps"] for o, _ in turns)
            figures["api.read_rps.pg"] = pg
            figures["api.read_rps.pg.p99"] = statistics.median(o["p99"] for o, _ in turns)
            figures["api.read_rps.bare_litestar.same_run"] = statistics.median(
                b["rps"] for _, b in turns
            )
            figures["api.read_throughput_ratio.pg"] = (
                pg / figures["api.read_rps.bare_litestar.same_run"]
            )
            key = a.auth["Authorization"].removeprefix("Bearer ")
            secret_box = str(Path(a.data_dir) / "secret-box.key")
            with served(
                key=key, database_url=url, vm_backend="none", secret_box_key_from=secret_box
            ) as b:
                both, p99 = _two_at_once([a_url, _read_url(b, devbox)], a.auth)
                figures["api.read_rps.pg_two_replicas"] = both
                figures["api.read_rps.pg_two_replicas.p99"] = p99
                latencies = _fanout(a, b, url)
        figures["api.event_fanout.p50"] = percentile(latencies, 0.5)
        figures["api.event_fanout.p95"] = percentile(latencies, 0.95)
        figures["api.event_fanout.events"] = float(len(latencies))
    finally:
        cluster.remove()
    merge_results(figures)
    print_table(figures, {"api.event_fanout.p95": 0.1})
    print("target: api.read_throughput_ratio.pg >= 0.5, api.event_fanout.p95 <= 0.1 s")


if __name__ == "__main__":
    main()
