"""API and SSH gateway figures, measured against `devbox-service serve` in its own process:
create-from-snapshot to `ready`, save to a ready snapshot, and `exec true` through the
gateway on a warm connection. Merges `api.*` and `ssh.*` into bench/results/latest.json."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import paramiko

from bench.common import free_port, merge_results, percentile, print_table
from devbox_service.settings import load_settings

TARGETS = {
    "api.create_to_ready.p50": 1.2,
    "api.save_to_ready.p50": 1.0,
    "ssh.gateway_exec.p50": 0.15,
}
RUNS = 5
EXECS = 30


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="devbox-bench-"))
    port, ssh_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_")}
    env.update(
        DEVBOX_DATA_DIR=str(data_dir),
        DEVBOX_CACHE_DIR=load_settings().cache_dir,
        DEVBOX_PORT=str(port),
        DEVBOX_SSH_PORT=str(ssh_port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "devbox_service", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    try:
        while True:
            try:
                if http.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
        image = next(
            i for i in http.get("/api/images", headers=auth).json()["data"] if i["default"]
        )

        def create_ready() -> tuple[str, float]:
            started = time.perf_counter()
            devbox_id = http.post(
                "/api/devboxes", params={"snapshot_id": image["id"]}, json={}, headers=auth
            ).json()["id"]
            while http.get(f"/api/devboxes/{devbox_id}", headers=auth).json()["status"] != "ready":
                time.sleep(0.02)
            return devbox_id, time.perf_counter() - started

        creates, saves = [], []
        for _ in range(RUNS):
            devbox_id, elapsed = create_ready()
            creates.append(elapsed)
            http.delete(f"/api/devboxes/{devbox_id}", headers=auth)
        devbox_id, _ = create_ready()
        for run in range(RUNS):
            started = time.perf_counter()
            saved = http.post(
                f"/api/devboxes/{devbox_id}/save", json={"name": f"b{run}"}, headers=auth
            ).json()
            saves.append(time.perf_counter() - started)
            assert saved["status"] == "ready", saved

        credentials = http.get(
            f"/api/admin/devboxes/{devbox_id}/ssh-credentials", headers=auth
        ).json()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=ssh_port,
            username=credentials["access_token"],
            password=credentials["password"],
            look_for_keys=False,
            allow_agent=False,
        )
        execs = []
        for _ in range(EXECS + 1):
            started = time.perf_counter()
            _, stdout, _ = client.exec_command("true")
            stdout.channel.recv_exit_status()
            execs.append(time.perf_counter() - started)
        client.close()
        execs = execs[1:]  # the first opens the gateway's connection to the guest
        http.delete(f"/api/devboxes/{devbox_id}", headers=auth)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    figures = {
        "api.create_to_ready.p50": statistics.median(creates),
        "api.save_to_ready.p50": statistics.median(saves),
        "ssh.gateway_exec.p50": statistics.median(execs),
        "ssh.gateway_exec.p95": percentile(execs, 0.95),
    }
    merge_results(figures)
    print_table(figures, TARGETS)


if __name__ == "__main__":
    main()
