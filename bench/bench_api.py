"""API and SSH gateway figures, measured against `devbox-service serve` in its own process:
create-from-snapshot to `ready`, save to a ready snapshot, and `exec true` through the
gateway on a warm connection. Merges `api.*` and `ssh.*` into bench/results/latest.json."""

from __future__ import annotations

import statistics
import time

from bench.common import merge_results, percentile, print_table, served

TARGETS = {
    "api.create_to_ready.p50": 1.2,
    "api.save_to_ready.p50": 1.0,
    "ssh.gateway_exec.p50": 0.15,
}
RUNS = 5
EXECS = 30


def main() -> None:
    with served() as service:
        http, auth = service.http, service.auth
        image_id = service.default_image()

        def create_ready() -> tuple[str, float]:
            started = time.perf_counter()
            devbox_id = service.start_devbox("bench", image_id)
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

        client = service.gateway(devbox_id)
        execs = []
        for _ in range(EXECS + 1):
            started = time.perf_counter()
            _, stdout, _ = client.exec_command("true")
            stdout.channel.recv_exit_status()
            execs.append(time.perf_counter() - started)
        client.close()
        execs = execs[1:]  # the first opens the gateway's connection to the guest

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
