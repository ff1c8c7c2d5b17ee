"""What every benchmark shares: percentiles, free ports, and the results file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paramiko

from devbox_service.settings import load_settings

RESULTS = Path(__file__).parent / "results" / "latest.json"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: the figure is one that was measured)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def merge_results(figures: dict[str, float]) -> dict[str, float]:
    """Update the flat results object with these figures and return the whole of it."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, float] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    current.update({k: round(v, 4) for k, v in figures.items()})
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return current


def print_table(figures: dict[str, float], targets: dict[str, float] | None = None) -> None:
    targets = targets or {}
    width = max(len(k) for k in figures) if figures else 10
    print(f"{'figure':<{width}}  {'value':>10}  target")
    for name, value in sorted(figures.items()):
        target = targets.get(name)
        verdict = "" if target is None else f"<= {target}  {'ok' if value <= target else 'MISSED'}"
        print(f"{name:<{width}}  {value:>10.4f}  {verdict}")


class Served:
    """`devbox-service serve` in its own process, with an HTTP client and the admin key."""

    def __init__(
        self, http: httpx.Client, auth: dict[str, str], ssh_port: int, data_dir: Path
    ) -> None:
        self.data_dir = data_dir
        self.http = http
        self.auth = auth
        self.ssh_port = ssh_port

    def default_image(self) -> str:
        images = self.http.get("/api/images", headers=self.auth).json()["data"]
        return str(next(i["id"] for i in images if i["default"]))

    def wait_ready(self, devbox_id: str) -> None:
        while (
            self.http.get(f"/api/devboxes/{devbox_id}", headers=self.auth).json()["status"]
            != "ready"
        ):
            time.sleep(0.02)

    def start_devbox(self, name: str, snapshot_id: str | None = None) -> str:
        """A new devbox (from the default image unless told), once it is ready; its id."""
        created = self.http.post(
            "/api/devboxes",
            params={"snapshot_id": snapshot_id or self.default_image()},
            json={"name": name},
            headers=self.auth,
        )
        created.raise_for_status()
        devbox_id = str(created.json()["id"])
        self.wait_ready(devbox_id)
        return devbox_id

    def gateway(self, devbox_id: str) -> paramiko.SSHClient:
        credentials = self.http.get(
            f"/api/admin/devboxes/{devbox_id}/ssh-credentials", headers=self.auth
        ).json()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.ssh_port,
            username=credentials["access_token"],
            password=credentials["password"],
            look_for_keys=False,
            allow_agent=False,
        )
        return client


@contextlib.contextmanager
def served(*, key: str = "", **settings: str) -> Iterator[Served]:
    """A fresh data dir, the shared image cache, free ports; stopped (SIGTERM) at the end.
    Keyword arguments are further settings (`standby_after_seconds="1"`: DEVBOX_...); `key`,
    the admin key of a store another process bootstrapped (a second replica)."""
    data_dir = Path(tempfile.mkdtemp(prefix="devbox-bench-"))
    secret_box_key = settings.pop("secret_box_key_from", "")
    if secret_box_key:
        shutil.copy(secret_box_key, data_dir / "secret-box.key")
    port, ssh_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_")}
    env.update(
        DEVBOX_DATA_DIR=str(data_dir),
        DEVBOX_CACHE_DIR=load_settings().cache_dir,
        DEVBOX_PORT=str(port),
        DEVBOX_SSH_PORT=str(ssh_port),
    )
    env.update({f"DEVBOX_{name.upper()}": value for name, value in settings.items()})
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
            if process.poll() is not None:
                raise RuntimeError("the service exited before it was ready")
            time.sleep(0.2)
        key = key or (data_dir / "admin.key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        try:
            yield Served(http, auth, ssh_port, data_dir)
        finally:  # VMs outlive the service by design: a failed benchmark must not leave any
            if settings.get("vm_backend") != "none":
                for devbox in http.get("/api/devboxes", headers=auth).json()["data"]:
                    http.delete(f"/api/devboxes/{devbox['id']}", headers=auth)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
