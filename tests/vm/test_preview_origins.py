"""Exposed services on their own origins, their cookies kept to them, and WebSockets relayed,
through the service as users run it (real HTTP), to servers in a real guest."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from live import LiveService, live_service
from websockets.sync.client import connect

pytestmark = pytest.mark.vm

# Two tiny servers for the guest (stdlib only): HTTP that sets a cookie and a service-worker
# scope, and a WebSocket echo.
GUEST_SERVERS = r"""
import base64, hashlib, http.server, socket, struct, threading

class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Set-Cookie", "sid=1; Domain=localhost; Path=/")
        self.send_header("Service-Worker-Allowed", "/")
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"page")
    def log_message(self, *args):
        pass

def echo(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key")][0]
    magic = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    accept = base64.b64encode(hashlib.sha1(key + magic).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        first = conn.recv(2)
        if len(first) < 2:
            return
        op, size = first[0] & 0x0F, first[1] & 0x7F
        if size == 126:
            size = struct.unpack(">H", conn.recv(2))[0]
        mask = conn.recv(4)
        data = b""
        while len(data) < size:
            data += conn.recv(size - len(data))
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if op == 8:
            conn.sendall(b"\x88\x00")
            return
        reply = b"echo:" + data
        conn.sendall(bytes([0x80 | op, len(reply)]) + reply)

def serve_echo():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 8091))
    server.listen()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()

threading.Thread(target=serve_echo, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8090), Page).serve_forever()
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("origins")) as service:
        yield service


def expose(live: LiveService, devbox_id: str, name: str, port: int) -> str:
    answer = live.http.post(
        f"/api/devboxes/{devbox_id}/http", json={"name": name, "port": port}, headers=live.headers()
    )
    assert answer.status_code == 200, answer.text
    found = [s for s in answer.json()["networking"]["http_services"] if s["name"] == name]
    return str(found[0]["url"])


def test_services_get_their_own_origin_cookies_and_websockets(live: LiveService) -> None:
    devbox_id = live.create_devbox()["id"]
    script = GUEST_SERVERS.replace("'", "'\"'\"'")
    live.run_in(devbox_id, f"printf '%s' '{script}' > /tmp/servers.py")
    live.run_in(devbox_id, "(nohup python3 /tmp/servers.py >/dev/null 2>&1 &)")
    page_url = expose(live, devbox_id, "page", 8090)
    socket_url = expose(live, devbox_id, "sock", 8091)
    own_host = urlsplit(page_url).netloc
    assert own_host == f"page-{devbox_id}.localhost:{live.port}"

    deadline = time.monotonic() + 60
    while True:
        on_origin = live.http.get("/", headers={"host": own_host})
        if on_origin.status_code == 200:
            break
        assert time.monotonic() < deadline, on_origin.text
        time.sleep(0.5)
    assert on_origin.text == "page"
    assert on_origin.headers["set-cookie"] == "sid=1; Path=/", "no Domain: the cookie stays here"
    assert "service-worker-allowed" not in on_origin.headers
    fallback = live.http.get(
        f"/preview/{devbox_id}/page/", headers=live.headers(), follow_redirects=False
    )
    assert fallback.status_code == 307  # never served on the dashboard's origin
    assert fallback.headers["location"] == f"http://{own_host}/"
    raw = socket.create_connection(("127.0.0.1", live.port))
    with pytest.raises(Exception):  # noqa: B017 (the handshake is refused; its type varies)
        connect(f"ws://127.0.0.1:{live.port}/preview/{devbox_id}/sock/", sock=raw)

    for uri, host in [
        (f"ws://{urlsplit(socket_url).netloc}/live", urlsplit(socket_url).netloc),
    ]:
        raw = socket.create_connection(("127.0.0.1", live.port))
        with connect(uri, sock=raw, open_timeout=30) as ws:
            ws.send("hello")
            assert ws.recv(timeout=30) == "echo:hello", (uri, host)
            ws.send(b"\x01\x02")
            assert ws.recv(timeout=30) == b"echo:\x01\x02"
    live.http.delete(f"/api/devboxes/{devbox_id}", headers=live.headers())


def test_a_websocket_to_a_port_nobody_serves_is_refused(live: LiveService) -> None:
    devbox_id = live.create_devbox()["id"]
    expose(live, devbox_id, "nothing", 8099)
    raw = socket.create_connection(("127.0.0.1", live.port))
    own_host = f"nothing-{devbox_id}.localhost:{live.port}"
    with pytest.raises(Exception):  # noqa: B017 (the handshake is refused; its type varies)
        connect(f"ws://{own_host}/", sock=raw)
    assert httpx.get(f"{live.base_url}/health").status_code == 200
    live.http.delete(f"/api/devboxes/{devbox_id}", headers=live.headers())
