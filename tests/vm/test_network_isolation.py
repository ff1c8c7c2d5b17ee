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

# A host the test makes in its own network namespace. Global unicast (next to TEST-NET-2,
# which the proxy refuses as special-purpose), so the proxy treats it as the internet.
OUTSIDE_NET = "198.51.101"
OUTSIDE_PORT = 8099
HOST_PORT = free_port()  # the host's own listeners: allowed as a port, refused as an address


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    ports = f"80,443,22,{OUTSIDE_PORT},{HOST_PORT}"
    with live_service(tmp_path_factory.mktemp("isolation"), EGRESS_PORTS=ports) as service:
        yield service


@contextlib.contextmanager
def host_listener(host: str, port: int = 0) -> Iterator[int]:
    """An HTTP server on the host that answers "host-secret" (what a guest must not read)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-secret")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port or free_port()), Handler)
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
            [*run, "python3", "-m", "http.server", str(OUTSIDE_PORT), "--bind", f"{OUTSIDE_NET}.2"],
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
    loopback, own_address = host_listener("127.0.0.1", HOST_PORT), f"{OUTSIDE_NET}.1"
    with loopback as loopback_port, host_listener(own_address, HOST_PORT) as own:
        for devbox in (first, live.wait_ready(_branch(live, first["id"]))):
            guest_id = devbox["id"]
            health = curl(
                live, guest_id, "http://10.0.2.100/health", "-o /dev/null -w %{http_code}"
            )
            assert health == "200", "the service's API is reachable at its documented address"
            assert curl(live, guest_id, f"http://{outside_host}:{OUTSIDE_PORT}/") == "outside-ok"
            refused = [
                f"http://10.0.2.2:{loopback_port}/",  # the host's loopback, as slirp maps it
                f"http://127.0.0.1:{loopback_port}/",  # the same, named through the proxy
                f"http://{OUTSIDE_NET}.1:{own}/",  # an address of the host itself
                f"http://10.0.2.2:{live.port}/health",  # the API, but not at its address
            ]
            refused += [f"http://10.0.2.2:{p}/" for p in forwarded_ports(live, second["id"])]
            refused += [
                f"http://{outside_host}:{OUTSIDE_PORT + 1}/",  # a port the proxy does not allow
                f"http://[64:ff9b::{_hex4(outside_host)}]:{OUTSIDE_PORT}/",  # NAT64 of it
                f"http://[2002:{_hex4(outside_host)}::1]:{OUTSIDE_PORT}/",  # 6to4 of it
                f"http://[::ffff:127.0.0.1]:{HOST_PORT}/",  # the host's loopback, mapped
            ]
            for url in refused:
                for how in ("", "--noproxy '*'"):
                    answer = curl(live, guest_id, url, how)
                    assert "host-secret" not in answer and not answer.startswith("{"), (url, how)
                    assert answer.startswith("refused") or "refused" in answer, (url, how, answer)
            decisions = _egress_log(live, guest_id)
            assert (outside_host, OUTSIDE_PORT, "allowed") in decisions
            assert ("64:ff9b::" + _hex4(outside_host), OUTSIDE_PORT, "refused") in decisions
            assert (outside_host, OUTSIDE_PORT + 1, "refused") in decisions


def _hex4(ipv4: str) -> str:
    """An IPv4 address as the last two groups of an IPv6 one."""
    a, b, c, d = (int(x) for x in ipv4.split("."))
    return f"{a << 8 | b:x}:{c << 8 | d:x}"


def _egress_log(live: LiveService, devbox_id: str) -> set[tuple[str, int, str]]:
    """The egress proxy's decisions logged for `devbox_id`: (host, port, outcome)."""
    found = set()
    for line in (live.data_dir / "service.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("devbox_id") == devbox_id and "outcome" in entry:
                found.add((entry["host"], entry["port"], entry["outcome"]))
    return found


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
