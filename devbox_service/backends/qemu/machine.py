"""One QEMU process: launch, adoption and shutdown (its conversation is `session`).

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
import logging
import os
import signal
from pathlib import Path
from typing import IO

from devbox_service.backends.base import GUEST_MARKER_VARIABLE, BackendError, CommandFailed
from devbox_service.backends.qemu.argv import GuestRam, LaunchSpec, command_line
from devbox_service.backends.qemu.session import MachineSession, MachineState
from devbox_service.backends.qemu.util import pid_alive, tail

log = logging.getLogger(__name__)


class LaunchFailed(CommandFailed):
    """QEMU exited (or never answered QMP) during launch; carries its output and console."""


class Machine(MachineSession):
    """A QEMU process we launched or adopted, with its QMP and agent connections."""

    def __init__(self, binary: str, launch: LaunchSpec, *, run_as: str = "") -> None:
        super().__init__(launch)
        self.binary = binary
        self.run_as = run_as  # the user QEMU switches to after opening its files ("" stays)
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ram: GuestRam | None = None

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None and self._proc.returncode is not None:
            return False
        return pid_alive(self.pid, self.launch_spec.process_marker)

    # launch / adopt -------------------------------------------------------------------------

    async def launch(
        self,
        *,
        state_file: Path | None = None,
        ram: GuestRam | None = None,
        wait_for_state: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Start QEMU in its own session and connect QMP; raise `LaunchFailed` if it dies.

        With `state_file`, QEMU restores it (`-incoming fd:N` on the open file: no shell and
        no cat in between) and runs the guest as soon as it is loaded. With `ram`, guest
        memory is that file (a memory template, or a clone of one). With `wait_for_state`,
        QEMU starts and waits for `restore` (a warm pool's process).
        """
        self._ram = ram
        if self.state is not MachineState.NEW:
            raise BackendError("machine already launched", state=self.state.value)
        state_fd = os.open(state_file, os.O_RDONLY) if state_file is not None else None
        incoming = f"fd:{state_fd}" if state_fd is not None else None
        try:
            await self._spawn_and_connect(
                "defer" if wait_for_state else incoming, state_fd, timeout
            )
            if ram is not None and incoming is not None:
                await self.set_ignore_shared(True)
                await self.qmp("migrate-incoming", {"uri": incoming})
        finally:
            if state_fd is not None:
                os.close(state_fd)

    async def restore(self, state_file: Path) -> None:
        """Load a state into a machine launched with `wait_for_state` (handed over QMP)."""
        fd = os.open(state_file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._connected_qmp().send_fd_scm(fd)
            await self.qmp("getfd", {"fdname": "devbox-incoming"})
        finally:
            os.close(fd)
        if self._ram is not None:
            await self.set_ignore_shared(True)
        await self.qmp("migrate-incoming", {"uri": "fd:devbox-incoming"})

    def move(self, launch: LaunchSpec) -> None:
        """The machine's directory was renamed to `launch.dir` (a pooled process became an
        instance): QEMU keeps its open files; later socket lookups use the new place."""
        self.launch_spec = launch
        self.dir = Path(launch.dir)

    async def _spawn_and_connect(
        self, incoming: str | None, state_fd: int | None, timeout: float
    ) -> None:
        for stale in (self.qmp_path, self.agent_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self.qmp_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = command_line(self.binary, self.launch_spec, incoming, self._ram, run_as=self.run_as)
        log_path = self.dir / "qemu.log"
        with _open_log(log_path) as out:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # survives the service; never killed with our group
                env={**os.environ, GUEST_MARKER_VARIABLE: self.launch_spec.process_marker},
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


def _open_log(path: Path) -> IO[bytes]:
    """QEMU's stdout/stderr, appended so earlier launches of the instance stay readable."""
    return open(path, "ab")


# `LaunchSpec` and `command_line` live in `argv`; callers outside the backend (bench/) take
# them from here together with `Machine`.
__all__ = ["LaunchFailed", "LaunchSpec", "Machine", "MachineState", "command_line"]
