"""Talking to a guest over SSH with the backend's own key: readiness and root commands.

Beside the QMP conversation (`session`) because these go through the guest's sshd, not QEMU.
"""

from __future__ import annotations

import asyncio

import asyncssh

from devbox_service.backends.base import BackendTimeout, CommandFailed, GuestUnreachable
from devbox_service.backends.qemu.session import MachineSession


async def wait_ssh_banner(
    port: int, timeout: float, console: MachineSession | None = None, host: str = "127.0.0.1"
) -> None:
    """Ready means sshd answers with its banner (slirp accepts and drops until it listens)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                    try:
                        line = await asyncio.wait_for(reader.readline(), 5.0)
                    finally:
                        writer.close()
                    if line.startswith(b"SSH-"):
                        return
                except (OSError, TimeoutError):
                    pass
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise GuestUnreachable(
            f"no SSH banner on port {port} in {timeout} s",
            console_tail=console.console_tail() if console else "",
        ) from None


async def guest_shell(port: int, key_path: str, command: str, timeout: float) -> str:
    """Run a command as root in the guest over SSH (the backend's own key); its stdout.
    Raises CommandFailed, GuestUnreachable, BackendTimeout."""
    try:
        async with asyncio.timeout(timeout):
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                username="root",
                client_keys=[key_path],
                known_hosts=None,
                config=(),
            ) as conn:
                result = await conn.run(command, check=False)
    except TimeoutError:
        raise BackendTimeout(f"{command!r} did not finish in the guest in {timeout} s") from None
    except (OSError, asyncssh.Error) as exc:
        raise GuestUnreachable(f"cannot reach the guest: {exc}", console_tail="") from exc
    if result.exit_status != 0:
        raise CommandFailed(
            "a command failed in the guest",
            command=[command],
            exit_code=result.exit_status or -1,
            output=str(result.stderr)[-2000:],
        )
    return str(result.stdout)


async def grow_root_filesystem(port: int, key_path: str, timeout: float) -> None:
    """Grow the guest's root ext4 to its (already larger) disk, online."""
    await guest_shell(port, key_path, "resize2fs /dev/vda", timeout)


# Run in a guest about to become a memory template: what it holds in memory beyond the
# running system is left as zeros, which the template file stores as holes. (dd's buffer
# is faulted in zeroed and freed again; at most 2 GB of it, so large guests stay quick.)
SETTLE_MEMORY = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory; "
    "free_mb=$(awk '/MemFree/{print int($2 * 9 / 10 / 1024)}' /proc/meminfo); "
    "[ $free_mb -gt 2048 ] && free_mb=2048; "
    "dd if=/dev/zero of=/dev/null bs=${free_mb}M count=1 2>/dev/null; "
    "echo 3 > /proc/sys/vm/drop_caches"
)
