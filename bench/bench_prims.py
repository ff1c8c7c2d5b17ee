"""The VM primitives API (`/api/instance/...`, Morph-compatible) against `devbox-service serve`
in its own process: exec round trips, and SSH through the gateway waking a paused instance,
from memory (QEMU stopped) and from standby (memory on disk, no QEMU process).

Run: `.venv/bin/python -m bench.bench_prims`. One VM at a time. The paused figures come from
a service with the default standby delay (nothing goes to standby); the standby figures from
a second service started with DEVBOX_STANDBY_AFTER_SECONDS=1, each sample checked to be in
standby (the backend's manifest says so and no QEMU process runs for it) before it is timed.
A wake is timed from the start of an SSH connection (`{instance_id}:{api_key}`, a throw-away
key, as the SDK logs in) to the first output of `echo hi`. Merges `prim.*` into
bench/results/latest.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncssh

from bench.common import Served, merge_results, percentile, print_table, served

TARGETS = {
    "prim.exec.p50": 0.05,
    "prim.wake_ssh.paused.p50": 0.5,
    "prim.wake_ssh.standby.p50": 1.0,
}
EXECS = 30
WAKES = 5
STANDBY_AFTER_SECONDS = 1.0
CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519")


def p50(values: list[float]) -> float:
    return percentile(values, 0.5)


def start_instance(service: Served) -> str:
    """`POST /api/instance` from the default image, once `GET` says it is ready; its id."""
    started = service.http.post(
        "/api/instance", params={"snapshot_id": service.default_image()}, headers=service.auth
    )
    started.raise_for_status()
    instance_id = str(started.json()["id"])
    deadline = time.monotonic() + 300
    while status(service, instance_id) != "ready":
        assert time.monotonic() < deadline, f"{instance_id} never became ready"
        time.sleep(0.05)
    woken = service.http.post(
        f"/api/instance/{instance_id}/wake-on", json={"wake_on_ssh": True}, headers=service.auth
    )
    woken.raise_for_status()
    assert woken.json()["wake_on"]["wake_on_ssh"] is True, woken.text
    return instance_id


def status(service: Served, instance_id: str) -> str:
    answer = service.http.get(f"/api/instance/{instance_id}", headers=service.auth)
    answer.raise_for_status()
    return str(answer.json()["status"])


def exec_true(service: Served, instance_id: str) -> float:
    started = time.perf_counter()
    answer = service.http.post(
        f"/api/instance/{instance_id}/exec", json={"command": ["true"]}, headers=service.auth
    )
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200 and answer.json()["exit_code"] == 0, answer.text
    return elapsed


def pause(service: Served, instance_id: str) -> None:
    paused = service.http.post(f"/api/instance/{instance_id}/pause", headers=service.auth)
    paused.raise_for_status()
    deadline = time.monotonic() + 60
    while status(service, instance_id) != "paused":
        assert time.monotonic() < deadline, f"{instance_id} never became paused"
        time.sleep(0.02)


def backend_state(service: Served, instance_id: str) -> str:
    """What the QEMU backend's manifest of the instance says (`running`, `standby`, ...)."""
    manifest = service.data_dir / "vms" / "instances" / instance_id / "manifest.json"
    return str(json.loads(manifest.read_text())["state"])


def qemu_running_for(service: Served, instance_id: str) -> bool:
    """Whether the QEMU process the instance's manifest names runs (a process taken from the
    warm pool has the pool's name on its command line, not the instance's)."""
    manifest = service.data_dir / "vms" / "instances" / instance_id / "manifest.json"
    pid = json.loads(manifest.read_text()).get("pid")
    return pid is not None and Path(f"/proc/{pid}").exists()


def wait_standby(service: Served, instance_id: str) -> None:
    deadline = time.monotonic() + 120
    while backend_state(service, instance_id) != "standby" or qemu_running_for(
        service, instance_id
    ):
        assert time.monotonic() < deadline, f"{instance_id} never went to standby"
        time.sleep(0.05)
    assert status(service, instance_id) == "paused"


async def first_output(service: Served, instance_id: str) -> dict[str, float]:
    """Seconds from the start of an SSH connection through the gateway to: logged in
    (`auth`), the session channel open and `echo hi` started (`session`: the gateway wakes
    the instance and connects to its guest here), and its first output (`output`)."""
    key = service.auth["Authorization"].removeprefix("Bearer ")
    started = time.perf_counter()
    async with asyncssh.connect(
        "127.0.0.1",
        service.ssh_port,
        username=f"{instance_id}:{key}",
        client_keys=[CLIENT_KEY],
        known_hosts=None,
        config=None,
        agent_path=None,
        preferred_auth="publickey",
        connect_timeout=60,
    ) as connection:
        auth = time.perf_counter() - started
        async with asyncio.timeout(60):
            process = await connection.create_process("echo hi")
            session = time.perf_counter() - started
            line = await process.stdout.readline()
            output = time.perf_counter() - started
            assert line.strip() == "hi", line
            await process.wait()
    return {"auth": auth, "session": session, "output": output}


def wakes(service: Served, instance_id: str, *, standby: bool) -> list[dict[str, float]]:
    samples = []
    for _ in range(WAKES):
        time.sleep(0.5)  # the guest settles after the previous wake
        pause(service, instance_id)
        if standby:
            wait_standby(service, instance_id)
        else:
            assert backend_state(service, instance_id) == "paused"
            assert qemu_running_for(service, instance_id)
        samples.append(asyncio.run(first_output(service, instance_id)))
        assert status(service, instance_id) == "ready"
    return samples


def summary(name: str, samples: list[dict[str, float]]) -> None:
    parts = ", ".join(f"{k} {p50([s[k] for s in samples]):.3f}" for k in samples[0])
    print(f"{name}: p50 seconds from connect start: {parts}")


def main() -> None:
    figures: dict[str, float] = {}
    with served() as service:
        instance_id = start_instance(service)
        execs = [exec_true(service, instance_id) for _ in range(EXECS + 2)][2:]
        figures["prim.exec.p50"] = p50(execs)
        figures["prim.exec.p95"] = percentile(execs, 0.95)

        ready = [asyncio.run(first_output(service, instance_id)) for _ in range(WAKES)]
        summary("ready (no wake)", ready)
        figures["prim.ssh_first_output.ready.p50"] = p50([s["output"] for s in ready])

        paused = wakes(service, instance_id, standby=False)
        summary("paused", paused)
        figures["prim.wake_ssh.paused.p50"] = p50([s["output"] for s in paused])
        service.http.delete(f"/api/instance/{instance_id}", headers=service.auth)

    with served(standby_after_seconds=str(STANDBY_AFTER_SECONDS)) as service:
        instance_id = start_instance(service)
        standby = wakes(service, instance_id, standby=True)
        summary("standby", standby)
        figures["prim.wake_ssh.standby.p50"] = p50([s["output"] for s in standby])
        service.http.delete(f"/api/instance/{instance_id}", headers=service.auth)

    merge_results(figures)
    print_table(figures, TARGETS)


if __name__ == "__main__":
    main()
