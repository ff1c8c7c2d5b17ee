"""One QEMU process: its command line, launch, QMP, the guest agent channel and shutdown.

Modelled on QEMU's python/qemu/machine: an explicit state, launch failures that carry the exit
code, command line and output, and a shutdown that asks nicely, then kills, and always cleans
up. The process is started in its own session so it outlives the service; a later service
adopts it again through its QMP socket.

States::

    NEW --launch/adopt--> RUNNING --shutdown--> SHUT_DOWN
                 \\--(failure)-----------------> SHUT_DOWN
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import msgspec
from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from devbox_service.backends.base import (
    BackendError,
    BackendTimeout,
    CommandFailed,
    GuestUnreachable,
    MachineSpec,
    QMPFailed,
)
from devbox_service.backends.qemu.util import pid_alive, tail

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # we report QMP failures ourselves


class LaunchFailed(CommandFailed):
    """QEMU exited (or never answered QMP) during launch; carries its output and console."""


class MachineState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    SHUT_DOWN = "shut_down"


class LaunchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the command line depends on. Restores need the same one (ports aside)."""

    name: str
    dir: str
    machine: str
    accel: str
    spec: MachineSpec
    kernel: str
    initrd: str
    disk: str
    ssh_port: int
    forwards: dict[int, int] = {}  # guest port -> host port, besides SSH
    tsc_khz: int = 0


def socket_dir(instance_dir: Path) -> Path:
    """Where the QMP and agent sockets live: the instance directory if the path fits.

    Unix socket paths are limited to 107 bytes; deep state dirs (pytest tmp dirs, long ids)
    get a short per-instance directory under the temp dir instead, derived from the instance
    directory so a restarted service finds the same sockets.
    """
    if len(str(instance_dir / "agent.sock")) <= 100:
        return instance_dir
    digest = hashlib.sha256(str(instance_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"devbox-vm-{os.getuid()}" / digest


def host_tsc_khz() -> int:
    """Under TCG the microvm kernel must be told the TSC rate or it may hang calibrating."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    return 0


# The guest kernel's command line. reboot=t: microvm has no reset register or keyboard
# controller, so a triple fault is the one reboot that reaches QEMU. tsc=reliable: under TCG
# the jiffies watchdog loses ticks when the host is busy and would demote the TSC, and a
# jiffies clock then falls seconds behind. A saved guest keeps the line it booted with, hence
# its hash is part of the boot snapshot key.
KERNEL_APPEND = (
    "console=ttyS0 root=/dev/vda rw quiet loglevel=3 mitigations=off 8250.nr_uarts=1 "
    "random.trust_cpu=on norandmaps reboot=t tsc=reliable"
)


def command_line(binary: str, ls: LaunchSpec, incoming: str | None = None) -> list[str]:
    d = Path(ls.dir)
    sockets = socket_dir(d)
    append = KERNEL_APPEND
    if ls.machine == "microvm":
        machine = (
            f"microvm,accel={ls.accel},x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,acpi=on"
        )
        bus = "device"
        if ls.tsc_khz:
            append += f" tsc_early_khz={ls.tsc_khz}"
    else:
        machine = f"pc,accel={ls.accel}"
        bus = "pci"
    fwd = f"hostfwd=tcp:127.0.0.1:{ls.ssh_port}-:22"
    for guest, host in sorted(ls.forwards.items()):
        fwd += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
    net_dev = f"virtio-net-{bus},netdev=n0" + (",romfile=" if bus == "pci" else "")
    argv = [
        binary,
        "-name", ls.name,
        "-no-user-config", "-nodefaults",
        "-machine", machine,
        "-cpu", "host" if ls.accel == "kvm" else "max",
        "-smp", str(ls.spec.vcpus),
        "-m", str(ls.spec.memory_mb),
        "-kernel", ls.kernel,
        "-initrd", ls.initrd,
        "-append", append,
        "-drive", f"file={ls.disk},if=none,id=d0,format=qcow2",
        "-device", f"virtio-blk-{bus},drive=d0",
        "-netdev", f"user,id=n0,{fwd}",
        "-device", net_dev,
        "-device", f"virtio-rng-{bus}",
        "-chardev", f"socket,id=agent,path={sockets / 'agent.sock'},server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", "virtserialport,chardev=agent,name=devbox.agent",
        "-chardev", f"file,id=ser0,path={d / 'console.log'},append=on",
        "-serial", "chardev:ser0",
        "-display", "none",
        "-qmp", f"unix:{sockets / 'qmp.sock'},server=on,wait=off",
    ]  # fmt: skip
    if incoming is not None:
        # -S: the guest runs only on our `cont`, after the agent channel is connected, so the
        # agent never sees the host "disconnected" and its first request is answered at once.
        argv += ["-S", "-incoming", incoming]
    return argv


class Machine:
    """A QEMU process we launched or adopted, with its QMP and agent connections."""

    def __init__(self, binary: str, launch: LaunchSpec) -> None:
        self.binary = binary
        self.launch_spec = launch
        self.dir = Path(launch.dir)
        self.state = MachineState.NEW
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._agent: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one QMP conversation at a time (e.g. save vs pause)

    @property
    def qmp_path(self) -> Path:
        return socket_dir(self.dir) / "qmp.sock"

    @property
    def agent_path(self) -> Path:
        return socket_dir(self.dir) / "agent.sock"

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    def console_tail(self, lines: int = 30) -> str:
        return tail(self.console_path, lines)

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None and self._proc.returncode is not None:
            return False
        return pid_alive(self.pid, str(self.qmp_path))

    # launch / adopt -------------------------------------------------------------------------

    async def launch(self, *, state_file: Path | None = None, timeout: float = 30.0) -> None:
        """Start QEMU in its own session and connect QMP; raise `LaunchFailed` if it dies.

        With `state_file`, QEMU restores it (`-incoming fd:N` on the open file: no shell and
        no cat in between) and runs the guest as soon as it is loaded.
        """
        if self.state is not MachineState.NEW:
            raise BackendError("machine already launched", state=self.state.value)
        state_fd = os.open(state_file, os.O_RDONLY) if state_file is not None else None
        incoming = f"fd:{state_fd}" if state_fd is not None else None
        try:
            await self._spawn_and_connect(incoming, state_fd, timeout)
        finally:
            if state_fd is not None:
                os.close(state_fd)

    async def _spawn_and_connect(
        self, incoming: str | None, state_fd: int | None, timeout: float
    ) -> None:
        for stale in (self.qmp_path, self.agent_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self.qmp_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = command_line(self.binary, self.launch_spec, incoming)
        log_path = self.dir / "qemu.log"
        with _open_log(log_path) as out:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # survives the service; never killed with our group
                pass_fds=(state_fd,) if state_fd is not None else (),
            )
        self.pid = self._proc.pid
        self.state = MachineState.RUNNING
        try:
            async with asyncio.timeout(timeout):
                await self._connect(self._launched_alive)
        except (TimeoutError, BackendError) as exc:
            code = self._proc.returncode
            await self._hard_kill()
            self.state = MachineState.SHUT_DOWN
            output = tail(log_path, 20)
            raise LaunchFailed(
                f"QEMU {'exited' if code is not None else 'did not answer QMP'} during launch",
                command=argv,
                exit_code=code if code is not None else -1,
                output=output + ("\n--- console ---\n" + self.console_tail() if incoming else ""),
            ) from exc

    def _launched_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def adopt(self, pid: int, timeout: float = 5.0) -> None:
        """Take over a QEMU left running by an earlier service process."""
        self.pid = pid
        if not self.alive():
            self.state = MachineState.SHUT_DOWN
            raise BackendError("QEMU process is gone", pid=pid)
        self.state = MachineState.RUNNING
        try:
            async with asyncio.timeout(timeout):
                await self._connect(self.alive)
        except (TimeoutError, BackendError) as exc:
            self.state = MachineState.SHUT_DOWN
            raise BackendError("cannot adopt QEMU: QMP does not answer", pid=pid) from exc

    async def _connect(self, still_alive: Any) -> None:
        while True:
            if not still_alive():
                raise BackendError("QEMU exited")
            if self.qmp_path.exists():
                qmp = QMPClient(self.launch_spec.name)
                try:
                    await qmp.connect(str(self.qmp_path))
                    self._qmp = qmp
                    break
                except (QMPError, OSError):
                    with contextlib.suppress(Exception):
                        await qmp.disconnect()
            await asyncio.sleep(0.01)
        while True:
            if self.agent_path.exists():
                break
            await asyncio.sleep(0.01)
        self._agent = await asyncio.open_unix_connection(str(self.agent_path))

    # QMP ----------------------------------------------------------------------------------------

    async def qmp(
        self, cmd: str, args: dict[str, object] | None = None, timeout: float = 15.0
    ) -> Any:
        if self._qmp is None:
            raise BackendError("no QMP connection", state=self.state.value)
        try:
            async with asyncio.timeout(timeout):
                return await self._qmp.execute(cmd, args)
        except ExecuteError as exc:
            raise QMPFailed(f"QMP {cmd} failed", command=cmd, error=str(exc)) from exc
        except TimeoutError:
            raise BackendTimeout(f"QMP {cmd} got no answer in {timeout} s", command=cmd) from None
        except (QMPError, OSError) as exc:
            raise QMPFailed(f"QMP {cmd}: connection failed", command=cmd, error=repr(exc)) from exc

    async def hmp(self, command: str) -> str:
        """HMP through QMP; HMP reports errors as text, which we turn into `QMPFailed`."""
        out = await self.qmp("human-monitor-command", {"command-line": command})
        text = str(out or "").strip()
        if text:
            raise QMPFailed(f"HMP {command!r} failed", command=command, error=text)
        return text

    async def status(self) -> str:
        return str((await self.qmp("query-status"))["status"])

    async def wait_incoming(self, timeout: float) -> None:
        """Wait until the incoming state is loaded and make sure the guest runs."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    status = await self.status()
                    if status != "inmigrate":
                        break
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise GuestUnreachable(
                f"state not loaded in {timeout} s", console_tail=self.console_tail()
            ) from None
        if status != "running":
            if status not in ("paused", "prelaunch", "postmigrate"):
                raise QMPFailed("restore failed", command="query-status", error=status)
            await self.qmp("cont")

    async def save_state(self, state_file: Path, *, new_top: Path | None, timeout: float) -> float:
        """Stop, optionally freeze the disk under a new overlay, write memory, continue.

        Returns how long the guest was stopped. The caller decides what the files mean.
        """
        async with self._lock:
            was_running = await self.status() == "running"
            t0 = time.perf_counter()
            await self.qmp("stop")
            try:
                if new_top is not None:
                    # Must come before migrate: the frozen layer is what the state refers to.
                    await self.qmp(
                        "blockdev-snapshot-sync",
                        {
                            "device": "d0",
                            "snapshot-file": str(new_top),
                            "format": "qcow2",
                            "mode": "absolute-paths",
                        },
                    )
                await self.migrate_to(state_file, timeout)
            finally:
                if was_running and self.alive():
                    await self.qmp("cont")
            return time.perf_counter() - t0

    async def migrate_to(self, state_file: Path, timeout: float) -> None:
        """Write the guest state to a file.

        QEMU 7.2 has no file: URI. Instead of `exec:cat > FILE` (a shell, a cat and a pipe in
        between) we hand QEMU the open file over QMP (SCM_RIGHTS + getfd) and migrate to
        `fd:`, so the migration thread writes the file itself: a shorter pause.
        """
        if self._qmp is None:
            raise BackendError("no QMP connection", state=self.state.value)
        await self.qmp("migrate-set-parameters", {"max-bandwidth": 64 << 30})
        fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._qmp.send_fd_scm(fd)
            await self.qmp("getfd", {"fdname": "devbox-state"})
            await self.qmp("migrate", {"uri": "fd:devbox-state"})
        finally:
            os.close(fd)  # QEMU holds its own copy until the migration ends
        try:
            async with asyncio.timeout(timeout):
                while True:
                    info = await self.qmp("query-migrate")
                    status = info.get("status")
                    if status == "completed":
                        return
                    if status in ("failed", "cancelled"):
                        raise QMPFailed(
                            "migration failed",
                            command="migrate",
                            error=str(info.get("error-desc", status)),
                        )
                    await asyncio.sleep(0.005)
        except BaseException:
            with contextlib.suppress(BackendError):
                await self.qmp("migrate_cancel")
            raise

    # guest agent --------------------------------------------------------------------------------

    async def agent(self, line: str, timeout: float) -> str:
        """One request/answer on the virtio-serial agent channel."""
        if self._agent is None:
            raise BackendError("no agent connection")
        reader, writer = self._agent
        try:
            async with asyncio.timeout(timeout):
                writer.write(line.encode() + b"\n")
                await writer.drain()
                answer = await reader.readline()
        except TimeoutError:
            raise GuestUnreachable(
                f"guest agent did not answer {line.split()[0]!r} in {timeout} s",
                console_tail=self.console_tail(),
            ) from None
        if not answer:
            raise GuestUnreachable("guest agent channel closed", console_tail=self.console_tail())
        return answer.decode().strip()

    async def sync_guest(self, timeout: float) -> None:
        """Step the guest clock to host time and reseed its RNG with fresh host bytes."""
        now = time.time_ns()
        answer = await self.agent(
            f"sync {now // 1_000_000_000} {now % 1_000_000_000} {os.urandom(64).hex()}", timeout
        )
        if answer != "ok":
            raise GuestUnreachable(f"guest agent: {answer}", console_tail=self.console_tail())

    async def reboot(self, timeout: float) -> None:
        """Ask the guest to reboot cleanly; reset the machine if it does not within `timeout`."""
        if self._qmp is None:
            raise BackendError("no QMP connection", state=self.state.value)
        with self._qmp.listener("RESET") as listener:
            try:
                await self.agent("reboot", 5.0)
                async with asyncio.timeout(timeout):
                    await listener.get()
                return
            except (BackendError, TimeoutError):
                log.warning("guest %s did not reboot itself; resetting", self.launch_spec.name)
            await self.qmp("system_reset")

    # shutdown -----------------------------------------------------------------------------------

    async def wait_exit(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                if self._proc is not None:
                    await self._proc.wait()
                else:
                    while True:
                        if not self.alive():
                            break
                        await asyncio.sleep(0.02)
            return True
        except TimeoutError:
            return False

    async def shutdown(self, *, graceful: bool = True, timeout: float = 10.0) -> None:
        """End the process: QMP quit (or a guest poweroff), then SIGKILL; always clean up."""
        try:
            if self.alive() and graceful:
                with contextlib.suppress(BackendError):
                    await self.qmp("quit", timeout=3)
                if not await self.wait_exit(timeout):
                    log.warning("QEMU %s ignored quit; killing it", self.pid)
        finally:
            await self._hard_kill()
            await self.disconnect()
            self.state = MachineState.SHUT_DOWN
            for path in (self.qmp_path, self.agent_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            if self.qmp_path.parent != self.dir:
                with contextlib.suppress(OSError):
                    self.qmp_path.parent.rmdir()

    async def _hard_kill(self) -> None:
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.wait_exit(5.0)

    async def disconnect(self) -> None:
        """Drop our connections; the process keeps running."""
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
            self._qmp = None
        if self._agent is not None:
            self._agent[1].close()
            self._agent = None


async def wait_ssh_banner(
    port: int, timeout: float, console: Machine | None = None, host: str = "127.0.0.1"
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


def _open_log(path: Path) -> IO[bytes]:
    """QEMU's stdout/stderr, appended so earlier launches of the instance stay readable."""
    return open(path, "ab")
