"""The SSH gateway against a real OpenSSH sshd (the "guest"), driven by paramiko, the client the
morphcloud CLI uses. Only the authority (credentials -> devbox -> endpoint) is an in-test class:
it is the gateway's seam; every byte of SSH here is real.

Paramiko blocks, and the gateway runs on the test's event loop, so every paramiko call runs in
a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import secrets
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncssh
import paramiko
import pytest
from support import free_port

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import NotFound
from devbox_service.ssh import LoginThrottle, SSHGateway
from devbox_service.ssh.gateway import HOST_KEY_FILE
from devbox_service.ssh.guest import GuestConnections
from devbox_service.ssh.login import credential_key

SSHD = "/usr/sbin/sshd"
TOKEN, PASSWORD = "tok_" + secrets.token_hex(8), secrets.token_urlsafe(16)
DEAD_TOKEN, GONE_TOKEN = "tok_dead", "tok_gone"
API_KEY = "dbx_" + secrets.token_hex(8)


def _links_to(port: int) -> set[str]:
    """Open TCP connections to a loopback port, by local address, from /proc (the gateway's
    upstream links)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[1] for row in rows if row[2].endswith(f":{port:04X}") and row[3] == "01"}


def _established_to(port: int) -> int:
    return len(_links_to(port))


async def gw_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def gw_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHEndpoint]:
    """A real sshd on a free loopback port, accepting one temp ed25519 key for this user."""
    root = tmp_path_factory.mktemp("gw_sshd")
    host_key, user_key = root / "host_key", root / "user_key"
    for path in (host_key, user_key):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(path)
        path.chmod(0o600)
        key.write_public_key(f"{path}.pub")
    (root / "authorized_keys").write_bytes(Path(f"{user_key}.pub").read_bytes())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\nAllowTcpForwarding yes\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True, timeout=30)
    log = root / "sshd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log_file)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen in time"
                time.sleep(0.05)
        yield SSHEndpoint(
            host="127.0.0.1", port=port, username=getpass.getuser(), private_key_path=str(user_key)
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class GwAuthority:
    """Maps fixed tokens to devboxes; counts `connect_target` calls (the wake-up point)."""

    def __init__(self, live: SSHEndpoint) -> None:
        dead = SSHEndpoint(
            host="127.0.0.1",
            port=free_port(),  # nothing listens there: a guest that is down
            username=live.username,
            private_key_path=live.private_key_path,
        )
        self.devboxes = {"dbx_live": live, "dbx_dead": dead}
        self.tokens = {TOKEN: "dbx_live", DEAD_TOKEN: "dbx_dead", GONE_TOKEN: "dbx_gone"}
        self.targets_opened: list[str] = []

    async def authenticate(self, username: str, password: str) -> str | None:
        devbox_id = self.tokens.get(username)
        return devbox_id if devbox_id and secrets.compare_digest(password, PASSWORD) else None

    async def authenticate_api_key_login(self, username: str) -> str | None:
        devbox_id, _, key = username.partition(":")
        known = devbox_id in self.devboxes and secrets.compare_digest(key, API_KEY)
        return devbox_id if known else None

    async def authenticate_devbox_key(self, devbox_id: str, public_key: str) -> str | None:
        return None

    async def connect_target(self, devbox_id: str) -> SSHEndpoint:
        self.targets_opened.append(devbox_id)
        if devbox_id not in self.devboxes:
            raise NotFound.of("devbox", devbox_id)
        return self.devboxes[devbox_id]


@pytest.fixture(scope="module")
def gw_authority(gw_sshd: SSHEndpoint) -> GwAuthority:
    return GwAuthority(gw_sshd)


@pytest.fixture(scope="module")
async def gw_gateway(
    gw_authority: GwAuthority, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SSHGateway]:
    gateway = SSHGateway(
        gw_authority,
        port=0,
        host_key_dir=tmp_path_factory.mktemp("gw_keys"),
        connect_timeout=10.0,
        throttle=LoginThrottle(base_delay=0.05, max_delay=0.4),
    )
    async with gateway:
        yield gateway


def _connect(
    port: int, *, host: str = "127.0.0.1", username: str = TOKEN, password: str = PASSWORD
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        host,
        port,
        username=username,
        password=password,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        auth_timeout=15,
        banner_timeout=10,
    )
    return client


def _transport(client: paramiko.SSHClient) -> paramiko.Transport:
    transport = client.get_transport()
    assert transport is not None
    return transport


def _run(client: paramiko.SSHClient, command: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Exec `command`, feed `stdin` from another thread (so output can flow), return all."""
    chan = _transport(client).open_session(timeout=10)
    chan.settimeout(30)
    chan.exec_command(command)

    def feed() -> None:
        chan.sendall(stdin)
        chan.shutdown_write()

    feeder = threading.Thread(target=feed)
    feeder.start()
    stdout = chan.makefile("rb").read()
    stderr = chan.makefile_stderr("rb").read()
    feeder.join(timeout=30)
    return chan.recv_exit_status(), stdout, stderr


@pytest.fixture
async def gw_client(gw_gateway: SSHGateway) -> AsyncIterator[paramiko.SSHClient]:
    client = await asyncio.to_thread(_connect, gw_gateway.port)
    yield client
    await asyncio.to_thread(client.close)


async def test_exec_passes_stdout_stderr_and_exit_status(gw_client: paramiko.SSHClient) -> None:
    status, out, err = await asyncio.to_thread(_run, gw_client, "echo hello; echo oops >&2; exit 3")
    assert (status, out, err) == (3, b"hello\n", b"oops\n")


async def test_exec_streams_stdin_through_and_propagates_eof(
    gw_client: paramiko.SSHClient,
) -> None:
    data = os.urandom(3 * 1024 * 1024)  # more than any window: flow control must hold
    status, out, _ = await asyncio.to_thread(_run, gw_client, "cat", data)
    assert status == 0
    assert out == data


async def test_exit_signal_is_passed_back(gw_gateway: SSHGateway) -> None:
    async with asyncssh.connect(
        "127.0.0.1",
        gw_gateway.port,
        username=TOKEN,
        password=PASSWORD,
        known_hosts=None,
        config=None,
        client_keys=None,
        agent_path=None,
    ) as conn:
        result = await asyncio.wait_for(conn.run("kill -TERM $$"), 20)
    assert result.exit_signal is not None
    assert result.exit_signal[0] == "TERM"


async def test_any_public_key_logs_in_with_an_api_key_in_the_user_name(
    gw_gateway: SSHGateway,
) -> None:
    """The SDK's login: `{devbox_id}:{api_key}` and a throw-away key it made itself."""

    async def login(username: str) -> str:
        async with asyncssh.connect(
            "127.0.0.1",
            gw_gateway.port,
            username=username,
            known_hosts=None,
            config=None,
            client_keys=[asyncssh.generate_private_key("ssh-rsa", key_size=1024)],
            agent_path=None,
            password=None,
        ) as conn:
            return str((await asyncio.wait_for(conn.run("echo in"), 20)).stdout)

    assert await login(f"dbx_live:{API_KEY}") == "in\n"
    for refused in (f"dbx_live:{API_KEY}x", "dbx_live", f"dbx_other:{API_KEY}"):
        with pytest.raises(asyncssh.PermissionDenied):
            await login(refused)


async def test_pty_shell_gets_term_size_and_resize(gw_client: paramiko.SSHClient) -> None:
    def shell() -> tuple[bytes, bytes]:
        chan = _transport(gw_client).open_session(timeout=10)
        chan.settimeout(20)
        chan.get_pty(term="xterm-256color", width=80, height=24)
        chan.invoke_shell()
        chan.sendall(b"stty size; echo TERM=$TERM\n")
        before = b""
        while b"TERM=xterm-256color\r\n" not in before:
            before += chan.recv(65536)
        chan.resize_pty(width=100, height=40)
        chan.sendall(b"stty size; exit\n")
        after = b""
        while chunk := chan.recv(65536):
            after += chunk
        return before, after

    before, after = await asyncio.to_thread(shell)
    assert b"24 80" in before
    assert b"40 100" in after


async def test_sftp_subsystem_round_trip(gw_client: paramiko.SSHClient, tmp_path: Path) -> None:
    local, back = tmp_path / "up.bin", tmp_path / "down.bin"
    local.write_bytes(os.urandom(700_000))
    remote_dir = tmp_path / "remote"  # sshd is on this host, so its files are ours to check
    remote_dir.mkdir()

    def transfer() -> list[str]:
        sftp = gw_client.open_sftp()
        try:
            sftp.put(str(local), f"{remote_dir}/file.bin")
            sftp.get(f"{remote_dir}/file.bin", str(back))
            return sorted(sftp.listdir(str(remote_dir)))
        finally:
            sftp.close()

    assert await asyncio.to_thread(transfer) == ["file.bin"]
    assert back.read_bytes() == local.read_bytes()
    assert (remote_dir / "file.bin").read_bytes() == local.read_bytes()


async def test_guest_refusing_a_session_gives_stderr_and_255(
    gw_client: paramiko.SSHClient,
) -> None:
    def unknown_subsystem() -> tuple[int, bytes]:
        chan = _transport(gw_client).open_session(timeout=10)
        chan.settimeout(20)
        chan.invoke_subsystem("no-such-subsystem")
        return chan.recv_exit_status(), chan.makefile_stderr("rb").read()

    status, err = await asyncio.to_thread(unknown_subsystem)
    assert status == 255
    assert b"devbox gateway: the devbox refused the session" in err


@pytest.fixture
async def gw_echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_direct_tcpip_forwarding(gw_client: paramiko.SSHClient, gw_echo_server: int) -> None:
    payload = os.urandom(200_000)

    def round_trip() -> bytes:
        chan = _transport(gw_client).open_channel(
            "direct-tcpip", ("127.0.0.1", gw_echo_server), ("127.0.0.1", 0), timeout=10
        )
        chan.settimeout(20)
        chan.sendall(payload)
        chan.shutdown_write()
        received = b""
        while chunk := chan.recv(65536):
            received += chunk
        chan.close()
        return received

    assert await asyncio.to_thread(round_trip) == payload


async def test_direct_tcpip_to_closed_port_is_refused(gw_client: paramiko.SSHClient) -> None:
    def open_closed() -> None:
        _transport(gw_client).open_channel(
            "direct-tcpip", ("127.0.0.1", free_port()), ("127.0.0.1", 0), timeout=10
        )

    with pytest.raises(paramiko.ChannelException):
        await asyncio.to_thread(open_closed)
    status, out, _ = await asyncio.to_thread(_run, gw_client, "echo still")
    assert (status, out) == (0, b"still\n")


async def test_wrong_password_is_denied_and_slowed_per_address_and_credential(
    gw_gateway: SSHGateway,
) -> None:
    throttle = gw_gateway.throttle
    wrong = credential_key("127.0.0.1", "password", TOKEN, "wrong")
    right = credential_key("127.0.0.1", "password", TOKEN, PASSWORD)
    from_here = throttle.failures("127.0.0.1")
    assert throttle.penalty(wrong) == 0
    penalties = []
    for _ in range(5):
        with pytest.raises(paramiko.AuthenticationException):
            await asyncio.to_thread(_connect, gw_gateway.port, password="wrong")
        penalties.append(throttle.penalty(wrong))
    assert penalties == [0.05, 0.1, 0.2, 0.4, 0.4]  # doubles, then capped
    assert throttle.failures("127.0.0.1") == from_here + 5  # failures answer later, too
    assert throttle.penalty(credential_key("::1", "password", TOKEN, "wrong")) == 0
    assert throttle.penalty(right) == 0, "the right password for the same token is not slowed"

    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(_connect, gw_gateway.port, username="tok_unknown")
    assert throttle.failures(wrong) == 5
    assert throttle.failures(credential_key("127.0.0.1", "password", "tok_unknown", PASSWORD)) == 1

    client = await asyncio.to_thread(_connect, gw_gateway.port)
    try:
        status, out, _ = await asyncio.to_thread(_run, client, "echo in")
        assert (status, out) == (0, b"in\n")
    finally:
        await asyncio.to_thread(client.close)
    assert throttle.failures("127.0.0.1") == from_here + 6, "a success forgives no address"


async def _ssh_login(port: int, username: str, password: str | None = None) -> None:
    """Log in (a password, or any throw-away key for an API key login) and leave."""
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        password=password,
        preferred_auth="password" if password else "publickey",
        client_keys=None if password else [asyncssh.generate_private_key("ssh-ed25519")],
        known_hosts=None,
        config=None,
        agent_path=None,
    ):
        pass


class CountingAuthority(GwAuthority):
    """Counts the logins it refused (the gateway checked them)."""

    refused = 0

    async def authenticate(self, username: str, password: str) -> str | None:
        found = await super().authenticate(username, password)
        self.refused += found is None
        return found

    async def authenticate_api_key_login(self, username: str) -> str | None:
        found = await super().authenticate_api_key_login(username)
        self.refused += found is None
        return found


async def test_the_owner_logs_in_at_once_while_strangers_hammer_their_devbox(
    gw_sshd: SSHEndpoint, tmp_path: Path
) -> None:
    """Nine wrong logins naming the owner's devbox (its token with wrong passwords, its id
    with wrong API keys), all from the owner's own address: the owner's right password and
    right API key log in while every one of those still waits for its answer."""
    authority = CountingAuthority(gw_sshd)
    throttle = LoginThrottle(base_delay=10.0, max_delay=60.0)
    async with SSHGateway(
        authority, port=0, host_key_dir=tmp_path, connect_timeout=10.0, throttle=throttle
    ) as gateway:
        hammer = [
            asyncio.create_task(_ssh_login(gateway.port, TOKEN, f"wrong-{n}")) for n in range(5)
        ] + [asyncio.create_task(_ssh_login(gateway.port, f"dbx_live:wrong-{n}")) for n in range(4)]
        try:
            await gw_until(lambda: authority.refused >= 2)  # both kinds are under way
            async with asyncio.timeout(20):  # a hang guard; what is checked is the order
                await _ssh_login(gateway.port, TOKEN, PASSWORD)
                await _ssh_login(gateway.port, f"dbx_live:{API_KEY}")
            assert not any(task.done() for task in hammer), "the owner waited for no stranger"
            assert throttle.failures("127.0.0.1") >= 2
        finally:
            for task in hammer:
                task.cancel()
            results = await asyncio.gather(*hammer, return_exceptions=True)
        assert not any(result is None for result in results), "no wrong login got in"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_listens_on_ipv4_and_ipv6_loopback(gw_gateway: SSHGateway, host: str) -> None:
    assert set(gw_gateway.ports) == {"127.0.0.1", "::1"}
    client = await asyncio.to_thread(_connect, gw_gateway.ports[host], host=host)
    try:
        status, out, _ = await asyncio.to_thread(_run, client, "echo ok")
        assert (status, out) == (0, b"ok\n")
    finally:
        await asyncio.to_thread(client.close)


@pytest.mark.parametrize(
    ("token", "reason"), [(DEAD_TOKEN, "unreachable"), (GONE_TOKEN, "not found")]
)
async def test_unreachable_devbox_fails_the_channel_cleanly(
    gw_gateway: SSHGateway,
    gw_client: paramiko.SSHClient,
    token: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await asyncio.to_thread(_connect, gw_gateway.port, username=token)
    try:
        with pytest.raises(paramiko.ChannelException):
            await asyncio.to_thread(_transport(client).open_session, timeout=20)
        # paramiko keeps the gateway's reason only in its log
        failures = [r.getMessage() for r in caplog.records if "open FAILED" in r.getMessage()]
        assert failures
        assert reason in failures[-1]
        assert _transport(client).is_active()  # the user's connection itself survives
    finally:
        await asyncio.to_thread(client.close)
    status, out, _ = await asyncio.to_thread(_run, gw_client, "echo others")
    assert (status, out) == (0, b"others\n")


async def test_upstream_is_opened_lazily_once_and_closed_with_the_user(
    gw_gateway: SSHGateway, gw_authority: GwAuthority, gw_sshd: SSHEndpoint
) -> None:
    await gw_until(lambda: _established_to(gw_sshd.port) == 0)
    opened = len(gw_authority.targets_opened)
    client = await asyncio.to_thread(_connect, gw_gateway.port)
    try:
        assert len(gw_authority.targets_opened) == opened  # logging in wakes nothing
        for _ in range(3):
            assert (await asyncio.to_thread(_run, client, "true"))[0] == 0
        assert gw_authority.targets_opened[opened:] == ["dbx_live"]
        assert _established_to(gw_sshd.port) == 1
    finally:
        await asyncio.to_thread(client.close)
    await gw_until(lambda: _established_to(gw_sshd.port) == 0)


async def test_host_key_is_kept_across_restarts(
    gw_gateway: SSHGateway, gw_authority: GwAuthority
) -> None:
    key_file = gw_gateway.host_key_dir / HOST_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600

    async def fingerprint(port: int) -> bytes:
        client = await asyncio.to_thread(_connect, port)
        try:
            return bytes(_transport(client).get_remote_server_key().get_fingerprint())
        finally:
            await asyncio.to_thread(client.close)

    first = await fingerprint(gw_gateway.port)
    async with SSHGateway(
        gw_authority, hosts=["127.0.0.1"], port=0, host_key_dir=gw_gateway.host_key_dir
    ) as again:
        assert await fingerprint(again.port) == first


async def test_execs_on_a_warm_connection_reuse_its_upstream(
    gw_client: paramiko.SSHClient, gw_authority: GwAuthority, gw_sshd: SSHEndpoint
) -> None:
    """What keeps the gateway's cost per exec small next to sshd's own: on a warm connection
    an exec is one more channel on the upstream link it already has, with no devbox lookup,
    no new TCP connection and no SSH login to the guest. Checked by the link itself (its
    local port stays the same) rather than by timing, which shared hosts make noisy."""
    await gw_until(lambda: _established_to(gw_sshd.port) == 0)  # earlier tests' links gone
    assert (await asyncio.to_thread(_run, gw_client, "true"))[0] == 0  # opens the upstream
    looked_up = len(gw_authority.targets_opened)
    (link,) = _links_to(gw_sshd.port)
    for i in range(7):
        status, out, _ = await asyncio.to_thread(_run, gw_client, f"echo {i}")
        assert (status, out) == (0, f"{i}\n".encode())
        assert _links_to(gw_sshd.port) == {link}, f"exec {i} did not reuse the upstream link"
    assert len(gw_authority.targets_opened) == looked_up, "an exec looked the devbox up again"


async def test_guest_connections_ignore_the_operators_ssh_config(
    gw_sshd: SSHEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `~/.ssh/config` that would break (or forward the agent into) every connection is
    not read: guests are untrusted, and the operator's settings are not theirs."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  ProxyCommand false\n  ForwardAgent yes\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "no-agent.sock"))
    connections = GuestConnections()
    try:
        result = await connections.run(gw_sshd, "echo reached")
        assert result.stdout == "reached\n"
    finally:
        await connections.close()


async def test_exec_keeps_at_most_its_cap_of_output_read_as_it_comes(gw_sshd: SSHEndpoint) -> None:
    """A command (or a hostile guest) prints 16 MiB on stdout and on stderr: the service
    keeps the first 256 KiB of each and says it cut them, without ever holding the rest, and
    another command on the same guest answers while the flood is read."""
    limit, flood = 256 * 1024, 16 * 1024 * 1024
    command = (
        f"head -c {flood} /dev/zero | tr '\\0' o; head -c {flood} /dev/zero | tr '\\0' e >&2; "
        "exit 3"
    )
    connections = GuestConnections()
    tracemalloc.start()
    try:
        flooding = asyncio.create_task(connections.execute(gw_sshd, command, 120, limit))
        other = await connections.execute(gw_sshd, "echo still", 30, limit)
        assert not flooding.done(), "the other command answered while the flood was read"
        status, out, err, truncated = await flooding
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await connections.close()
    assert other == (0, "still\n", "", False)
    assert (status, truncated) == (3, True)
    assert out == "o" * limit and err == "e" * limit
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.0f} MiB held reading the flood"
