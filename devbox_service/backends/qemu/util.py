"""Small helpers shared by the QEMU backend: subprocesses with deadlines, atomic files, pids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devbox_service.backends.base import BackendTimeout, CommandFailed


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a host command without blocking the loop; raise `CommandFailed` with its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise BackendTimeout(
            f"{argv[0]} did not finish within {timeout:.0f} s", command=list(argv)
        ) from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(
            f"{Path(argv[0]).name} exited with {proc.returncode}",
            command=argv,
            exit_code=proc.returncode or -1,
            output=text[-4000:],
        )
    return text


def fsync_path(path: Path) -> None:
    """Make a file (or directory entry) durable; a snapshot counts only once it is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so readers see the old or the new manifest, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def pid_alive(pid: int, must_contain: str | None = None) -> bool:
    """True if `pid` runs (zombies count as dead) and, if given, its cmdline mentions a marker.

    The marker guards against pid reuse after a host reboot or a long downtime.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        if must_contain is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if must_contain.encode() not in f.read():
                    return False
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return True


def kill_strays(marker: str) -> None:
    """Kill QEMU processes whose command line names `marker` (a boot cut short by a crash)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name), marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), 9)


def proc_usage(pid: int) -> tuple[int, float]:
    """RSS in kB and CPU seconds (user + system) of a process, from /proc (cheap: liveness
    checks call it for every VM)."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss_kb, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_pss_kb(pid: int) -> int:
    """Proportional memory in kB: pages shared with other processes count in part. Walks the
    whole address space (a few ms for a VM), so only where memory is accounted."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def host_tsc_khz() -> int:
    """Under TCG the microvm kernel must be told the TSC rate or it may hang calibrating."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    return 0


def free_port() -> int:
    """A free loopback TCP port (the kernel picks it; QEMU binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def file_size(path: Path) -> int:
    """Bytes on disk (holes not counted), 0 for a file that is not there (a snapshot's size
    is best effort)."""
    try:
        found = path.stat()
        return min(found.st_size, found.st_blocks * 512)
    except FileNotFoundError:
        return 0


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a console or log file, for error reports."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
