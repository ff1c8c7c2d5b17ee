"""A private PostgreSQL cluster in a directory of its own: Debian's server, `initdb` +
`pg_ctl`. The test suite and the benchmarks start one each; it is also the quickest way to try
several replicas on one machine. Not for production (see README: a real server, with a
password, and backups).

The cluster lives in its own directory under /tmp (pytest's temp dirs are closed to other
users, and the server must not run as root: as root it runs as `postgres`). It listens on
loopback at a free port with `trust` for local connections only (a test cluster: nothing
else on the machine is meant to reach it) and fsync off (a crash loses a test run, not data).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bin_dir() -> Path:
    """Debian keeps the server's programs under /usr/lib/postgresql/<version>/bin."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for found in versions:
        if (found / "initdb").exists():
            return found
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")


class PostgresServer:
    def __init__(self, *, fsync: bool = False) -> None:
        """`fsync`: write as a real server does (benchmarks); off, a crash loses the run."""
        self.fsync = fsync
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="devbox-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "devbox", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
        options += "-c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.root / "server.log"  # the server must not hold our pipes open
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def admin_url(self) -> str:
        return f"postgresql://devbox@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh, empty database for one test (or one service); its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [
                str(self.bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "devbox",
                name,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return f"postgresql://devbox@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()
