"""The service as users run it: `devbox-service serve` in its own process, reached over real
HTTP (and the `morphcloud` CLI), for tests that need a real server (streams, the CLI)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
from support import GENEROUS_LIMITS, free_port
from vm_fixtures import CACHE_DIR

VENV_BIN = Path(sys.executable).parent
BUILD_TERMINAL = {"completed", "cancelled", "error", "step_failed"}


class LiveService:
    def __init__(self, data_dir: Path, port: int, ssh_port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.ssh_port = ssh_port
        self.base_url = f"http://127.0.0.1:{port}"
        self.key = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.base_url, timeout=120)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def create_devbox(self) -> dict[str, Any]:
        images = self.http.get("/api/images", headers=self.headers()).json()["data"]
        image = next(i for i in images if i["default"])
        created = self.http.post(
            "/api/devboxes",
            params={"snapshot_id": image["id"]},
            json={"name": "live"},
            headers=self.headers(),
        )
        assert created.status_code == 200, created.text
        return self.wait_ready(created.json()["id"])

    def wait_ready(self, devbox_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 240
        while True:
            body: dict[str, Any] = self.http.get(
                f"/api/devboxes/{devbox_id}", headers=self.headers()
            ).json()
            if body.get("status") == "ready":
                return body
            assert body.get("status") != "error" and time.monotonic() < deadline, body
            time.sleep(0.3)

    def build_events(
        self,
        template_id: str,
        run_id: str,
        *,
        stop_after: int | None = None,
        into: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Read a build's SSE stream until a terminal event (or `stop_after` events), each
        appended to `into` as it arrives (for a test that acts mid-stream)."""
        found: list[dict[str, Any]] = [] if into is None else into
        with self.http.stream(
            "GET",
            f"/api/templates/{template_id}/events",
            params={"run_id": run_id},
            headers={**self.headers(), "Accept": "text/event-stream"},
            timeout=httpx.Timeout(300, connect=10),
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:].strip())
                found.append(event)
                if event["type"] in BUILD_TERMINAL or (stop_after and len(found) >= stop_after):
                    break
        return found

    def gateway_client(
        self, devbox_id: str, host: str = "127.0.0.1", key: str | None = None
    ) -> paramiko.SSHClient:
        """SSH through the gateway with the devbox owner's credentials (`key`: the owner's)."""
        credentials = self.http.get(
            f"/api/admin/devboxes/{devbox_id}/ssh-credentials", headers=self.headers(key)
        ).json()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            host,
            port=self.ssh_port,
            username=credentials["access_token"],
            password=credentials["password"],
            look_for_keys=False,
            allow_agent=False,
            timeout=60,
        )
        return client

    def run_in(self, devbox_id: str, command: str, key: str | None = None) -> str:
        """A command in the devbox through the SSH gateway, as users reach it; its stdout."""
        client = self.gateway_client(devbox_id, key=key)
        try:
            _, stdout, stderr = client.exec_command(command)
            status = stdout.channel.recv_exit_status()
            out: str = stdout.read().decode()
            assert status == 0, f"{command!r} -> {status}: {stderr.read().decode()}"
            return out
        finally:
            client.close()

    def add_user(self, name: str, org: str | None = None) -> str:
        """A new user (a member of `org`, or of their own org) and an API key for them, made
        with the operator's CLI on the running service's data; the key."""
        env = {**os.environ, "DEVBOX_DATA_DIR": str(self.data_dir)}
        command = [sys.executable, "-m", "devbox_service"]
        org_args = ["--org", org] if org else []
        subprocess.run([*command, "users", "create", name, *org_args], env=env, check=True)
        issued = subprocess.run(
            [*command, "keys", "create", "--user", name, *org_args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return issued.stdout.strip().splitlines()[-1]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "MORPH_API_KEY": self.key,
            "MORPH_DEVBOX_BASE_URL": self.base_url,
            "MORPH_SSH_HOSTNAME": "localhost",
            "MORPH_SSH_PORT": str(self.ssh_port),
            "HOME": str(self.data_dir),
        }
        result = subprocess.run(
            [str(VENV_BIN / "morphcloud"), "devbox", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result


@contextlib.contextmanager
def live_service(
    data_dir: Path, *, keep_devboxes: bool = False, **settings: str
) -> Iterator[LiveService]:
    """`devbox-service serve` in its own process on free ports (extra `DEVBOX_*` settings
    given by name, e.g. `TEMPLATE_SECRET_WAIT_SECONDS="5"`); its devboxes are deleted (unless
    `keep_devboxes`) and
    the process stopped at the end."""
    service = LiveService(data_dir, free_port(), free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_")}
    env.update(
        DEVBOX_DATA_DIR=str(data_dir),
        DEVBOX_PORT=str(service.port),
        DEVBOX_SSH_PORT=str(service.ssh_port),
        DEVBOX_CACHE_DIR=CACHE_DIR,
    )
    env.update({f"DEVBOX_{name.upper()}": str(value) for name, value in GENEROUS_LIMITS.items()})
    env.update({f"DEVBOX_{name}": value for name, value in settings.items()})  # the test's own
    log = (data_dir / "service.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "devbox_service", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 1800
        while True:
            assert process.poll() is None, (data_dir / "service.log").read_text()[-3000:]
            try:
                if service.http.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.5)
        admin_key = data_dir / "admin.key"  # none on a replica of a store bootstrapped before
        service.key = admin_key.read_text().strip() if admin_key.exists() else ""
        service.process = process
        yield service
        if not keep_devboxes and service.key:  # kept: a restart test re-adopts them
            listed = service.http.get("/api/devboxes", headers=service.headers()).json()["data"]
            for devbox in listed:
                service.http.delete(f"/api/devboxes/{devbox['id']}", headers=service.headers())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
