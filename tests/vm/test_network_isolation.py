"""A guest is root and may be hostile: from inside real guests, the host's loopback services and
other guests' forwarded ports refuse, the service's API answers at its one documented address,
the internet is reached through the filtering proxy, and all of it holds after a branch."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from live import LiveService, live_service
from support import free_port

pytestmark = pytest.mark.vm

OUTSIDE_NET = "198.51.100"  # TEST-NET-2: a host the test makes in its own network namespace


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("isolation")) as service:
        yield service


@contextlib.contextmanager
def host_listener(host: str) -> Iterator[int]:
    """An HTTP server on the host that answers "host-secret" (what a guest must not read)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-secret")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def outside_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A host that is not this one: a network namespace behind a veth pair, serving HTTP."""
    name = f"dbx{secrets.token_hex(3)}"
    run = ["ip", "netns", "exec", name]
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", f"{name}h", "type", "veth", "peer", "name", f"{name}n"],
        ["ip", "link", "set", f"{name}n", "netns", name],
        ["ip", "addr", "add", f"{OUTSIDE_NET}.1/30", "dev", f"{name}h"],
        ["ip", "link", "set", f"{name}h", "up"],
        [*run, "ip", "addr", "add", f"{OUTSIDE_NET}.2/30", "dev", f"{name}n"],
        [*run, "ip", "link", "set", f"{name}n", "up"],
        [*run, "ip", "link", "set", "lo", "up"],
    ]
    root = tmp_path_factory.mktemp("outside")
    (root / "index.html").write_text("outside-ok")
    server: subprocess.Popen[bytes] | None = None
    try:
        for command in commands:
            subprocess.run(command, check=True, timeout=30)
        server = subprocess.Popen(
            [*run, "python3", "-m", "http.server", "8099", "--bind", f"{OUTSIDE_NET}.2"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield f"{OUTSIDE_NET}.2"
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "link", "del", f"{name}h"], check=False, timeout=30)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def curl(live: LiveService, devbox_id: str, url: str, *options: str) -> str:
    """What `curl` in the guest got: the body, or `refused <exit code>`."""
    command = f'curl -s -m 8 {" ".join(options)} {url}; echo " rc=$?"'
    out = live.run_in(devbox_id, command).strip()
    body, _, code = out.rpartition(" rc=")
    return body if code == "0" else f"refused {code}: {body}"


def forwarded_ports(live: LiveService, devbox_id: str) -> list[int]:
    """The host loopback ports QEMU forwards into a devbox (read from the command line of the
    process its manifest names: one from the warm pool is named for the pool)."""
    manifest = live.data_dir / "vms" / "instances" / devbox_id / "manifest.json"
    pid = json.loads(manifest.read_text())["pid"]
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if args[0].endswith(b"qemu-system-x86_64"):
            text = b" ".join(args).decode()
            return [int(p) for p in re.findall(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-", text)]
    raise AssertionError(f"no QEMU process for {devbox_id}")


def test_a_guest_reaches_the_api_and_the_outside_but_nothing_on_the_host(
    live: LiveService, outside_host: str
) -> None:
    first, second = live.create_devbox(), live.create_devbox()
    with host_listener("127.0.0.1") as loopback_port, host_listener(f"{OUTSIDE_NET}.1") as own:
        for devbox in (first, live.wait_ready(_branch(live, first["id"]))):
            guest_id = devbox["id"]
            health = curl(
                live, guest_id, "http://10.0.2.100/health", "-o /dev/null -w %{http_code}"
            )
            assert health == "200", "the service's API is reachable at its documented address"
            assert curl(live, guest_id, f"http://{outside_host}:8099/") == "outside-ok"
            refused = [
                f"http://10.0.2.2:{loopback_port}/",  # the host's loopback, as slirp maps it
                f"http://127.0.0.1:{loopback_port}/",  # the same, named through the proxy
                f"http://{OUTSIDE_NET}.1:{own}/",  # an address of the host itself
                f"http://10.0.2.2:{live.port}/health",  # the API, but not at its address
            ]
            refused += [f"http://10.0.2.2:{p}/" for p in forwarded_ports(live, second["id"])]
            for url in refused:
                for how in ("", "--noproxy '*'"):
                    answer = curl(live, guest_id, url, how)
                    assert "host-secret" not in answer and not answer.startswith("{"), (url, how)
                    assert answer.startswith("refused") or "refused" in answer, (url, how, answer)


def test_gateway_port_forwarding_reaches_only_the_devboxs_own_guest(live: LiveService) -> None:
    devbox = live.create_devbox()
    client = live.gateway_client(devbox["id"])
    try:
        transport = client.get_transport()
        assert transport is not None
        with (
            host_listener("127.0.0.1") as port,
            pytest.raises(paramiko.ChannelException),
        ):
            transport.open_channel("direct-tcpip", ("10.0.2.2", port), ("127.0.0.1", 0))
        own = transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0))
        assert own.recv(4).startswith(b"SSH-"), "the guest's own services stay reachable"
        own.close()
    finally:
        client.close()


def _branch(live: LiveService, devbox_id: str) -> str:
    answer = live.http.post(f"/api/devboxes/{devbox_id}/branch", json={}, headers=live.headers())
    assert answer.status_code == 200, answer.text
    return str(answer.json()["instances"][0]["id"])
