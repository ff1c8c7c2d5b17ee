"""The API under load, side by side with the framework itself.

`api.read_throughput_ratio`: requests per second of the service's authenticated
`GET /api/devboxes/{id}` (a real API key, a real devbox) over those of a bare Litestar app
answering the same bytes (`bench/bare_app.py`), same uvicorn settings, same `wrk` load (2
threads, 64 connections, 5 s; three turns each, alternating; medians). Non-2xx answers and
socket errors are counted for both.

`api.mixed_100.*`: 100 concurrent clients for 60 s, each looping over a mix of reads and
writes (get, list, metadata update, pause/resume, notification); errors are any non-2xx
answer or failed request.

Run: `.venv/bin/python -m bench.bench_load [--seconds 60]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.common import Served, free_port, merge_results, print_table, served

CONNECTIONS = 64
DURATION = "5s"
ROUNDS = 3


def wrk(url: str, headers: dict[str, str]) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    return {
        "rps": rps,
        "p99": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "errors": float(sum(int(n) for n in errors.groups())) if errors else 0.0,
    }


@contextlib.contextmanager
def bare_server(body: bytes) -> Iterator[str]:
    """The bare app serving `body`; its URL."""
    port = free_port()
    body_file = Path(tempfile.mkdtemp(prefix="devbox-bench-bare-")) / "body.json"
    body_file.write_bytes(body)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", str(port), str(body_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/devboxes/x"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url).content == body:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the bare app did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def side_by_side(ours: str, auth: dict[str, str], body: bytes) -> dict[str, float]:
    """Both servers up at once, measured in turns (ROUNDS each), so that a noisy moment on
    the host hits both; the ratio of the medians."""
    with bare_server(body) as theirs:
        runs = [(wrk(ours, auth), wrk(theirs, {})) for _ in range(ROUNDS)]
    ours_rps = statistics.median(o["rps"] for o, _ in runs)
    bare_rps = statistics.median(b["rps"] for _, b in runs)
    failures = sum(r["non_2xx"] + r["errors"] for pair in runs for r in pair)
    return {
        "api.read_rps": ours_rps,
        "api.read_rps.bare_litestar": bare_rps,
        "api.read_throughput_ratio": ours_rps / bare_rps,
        "api.read_non_2xx_or_errors": failures,
    }


async def mixed_clients(
    service: Served, devbox_id: str, clients: int, seconds: float
) -> dict[str, float]:
    base_url = str(service.http.base_url).rstrip("/")
    done = {"requests": 0, "errors": 0}
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(number)
        async with httpx.AsyncClient(base_url=base_url, headers=service.auth, timeout=60) as http:
            while time.monotonic() < deadline:
                pick = rng.random()
                try:
                    if pick < 0.55:
                        answer = await http.get(f"/api/devboxes/{devbox_id}")
                    elif pick < 0.7:
                        answer = await http.get("/api/devboxes")
                    elif pick < 0.85:
                        answer = await http.post(
                            f"/api/devboxes/{devbox_id}/metadata", json={f"c{number}": pick}
                        )
                    elif pick < 0.92:
                        action = "pause" if rng.random() < 0.5 else "resume"
                        answer = await http.post(f"/api/devboxes/{devbox_id}/{action}")
                    else:
                        answer = await http.post(
                            f"/api/devboxes/{devbox_id}/notifications",
                            json={"title": f"from client {number}"},
                        )
                    ok = answer.status_code < 300
                    if not ok:
                        failures.append(
                            f"{answer.request.url.path}: {answer.status_code} {answer.text[:120]}"
                        )
                except httpx.HTTPError as exc:
                    ok = False
                    failures.append(f"{type(exc).__name__}: {exc}")
                done["requests"] += 1
                done["errors"] += 0 if ok else 1

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - started
    for failure in failures[:10]:
        print("  failed:", failure)
    return {
        "api.mixed_100.requests": float(done["requests"]),
        "api.mixed_100.errors": float(done["errors"]),
        "api.mixed_100.rps": done["requests"] / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with served() as service:
        devbox_id = service.start_devbox("load")
        url = f"{str(service.http.base_url).rstrip('/')}/api/devboxes/{devbox_id}"
        body = service.http.get(url, headers=service.auth).content
        reads = side_by_side(url, service.auth, body)
        mixed = asyncio.run(mixed_clients(service, devbox_id, 100, args.seconds))
    figures = {**reads, **mixed}
    merge_results(figures)
    print_table(figures, {})
    print("target: api.read_throughput_ratio >= 0.5, api.mixed_100.errors == 0")


if __name__ == "__main__":
    main()
