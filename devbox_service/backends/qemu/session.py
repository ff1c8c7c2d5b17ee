"""The conversation with a running QEMU: QMP commands, state files and the guest agent channel.

Separate from the process lifecycle (`machine.Machine` adds launch, adopt and shutdown on top)
because the conversation is the same whether we started the process or adopted it from an
earlier service.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from devbox_service.backends.base import (
    BackendError,
    BackendTimeout,
    GuestUnreachable,
    QMPFailed,
)
from devbox_service.backends.qemu.argv import LaunchSpec, socket_dir
from devbox_service.backends.qemu.util import tail

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # we report QMP failures ourselves


class MachineState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    SHUT_DOWN = "shut_down"


FLATTEN_JOB = "flatten"
FDSET_PREFIX = "/dev/fdset/"


class MachineSession(abc.ABC):
    """QMP and agent connections to one QEMU, and the operations built on them."""

    def __init__(self, launch: LaunchSpec) -> None:
        self.launch_spec = launch
        self.dir = Path(launch.dir)
        self.state = MachineState.NEW
        self._qmp: QMPClient | None = None
        self._agent: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one QMP conversation at a time (e.g. save vs pause)

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the QEMU process still runs (only the process side can tell)."""

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

    async def _connect(self, still_alive: Callable[[], bool]) -> None:
        """Poll until QMP and then the agent socket accept us, or the process is gone."""
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

    def _connected_qmp(self) -> QMPClient:
        if self._qmp is None:
            raise BackendError("no QMP connection", state=self.state.value)
        return self._qmp

    async def disconnect(self) -> None:
        """Drop our connections; the process keeps running."""
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
            self._qmp = None
        if self._agent is not None:
            self._agent[1].close()
            self._agent = None

    # QMP ----------------------------------------------------------------------------------------

    async def qmp(
        self, cmd: str, args: dict[str, object] | None = None, timeout: float = 15.0
    ) -> Any:
        qmp = self._connected_qmp()
        try:
            async with asyncio.timeout(timeout):
                return await qmp.execute(cmd, args)
        except ExecuteError as exc:
            raise QMPFailed(f"QMP {cmd} failed", command=cmd, error=str(exc)) from exc
        except TimeoutError:
            raise BackendTimeout(f"QMP {cmd} got no answer in {timeout} s", command=cmd) from None
        except (QMPError, OSError) as exc:
            raise QMPFailed(f"QMP {cmd}: connection failed", command=cmd, error=repr(exc)) from exc

    async def hmp(self, command: str, success: str | None = None) -> str:
        """HMP through QMP; HMP reports errors as text, which we turn into `QMPFailed`
        (text containing `success` is the command's own report of having worked)."""
        out = await self.qmp("human-monitor-command", {"command-line": command})
        text = str(out or "").strip()
        if text and (success is None or success not in text):
            raise QMPFailed(f"HMP {command!r} failed", command=command, error=text)
        return text

    # the disk chain ---------------------------------------------------------------------------

    async def stream_into_top(self, base: str) -> None:
        """Start copying every layer between `base` and the top into the top one, in the
        background while the guest runs; QEMU drops those layers from the chain at the end.
        Frozen layers are only read, so the snapshots that own them stay as they are."""
        # By node: QEMU finds `base` by file name only through names of paths, and a layer a
        # save put on is named /dev/fdset/N (`put_overlay`), which it cannot resolve past.
        target: dict[str, object] = {"base": base}
        for node in await self.qmp("query-named-block-nodes", {"flat": True}):
            if node.get("drv") == "qcow2" and node.get("file") == base and node.get("node-name"):
                target = {"base-node": node["node-name"]}
                break
        await self.qmp("block-stream", {"job-id": FLATTEN_JOB, "device": "d0", **target})

    async def flattening(self) -> bool:
        jobs = await self.qmp("query-block-jobs")
        return any(job.get("device") == FLATTEN_JOB for job in jobs)

    async def settle_flattening(self, wait: float, timeout: float = 10.0) -> None:
        """Before the disk chain changes or the memory is written (a save, standby): let a
        stream under way finish for up to `wait` seconds (the guest runs meanwhile, so this
        is not pause time), then cancel it (what it copied stays valid)."""
        deadline = time.monotonic() + wait
        while await self.flattening():
            if time.monotonic() >= deadline:
                with contextlib.suppress(QMPFailed):  # it may have ended in between
                    await self.qmp("block-job-cancel", {"device": FLATTEN_JOB})
                async with asyncio.timeout(timeout):
                    while await self.flattening():
                        await asyncio.sleep(0.01)
                return
            await asyncio.sleep(0.02)

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
        """Stop, optionally freeze the disk under `new_top` (a qcow2 the caller made over the
        current top, see `put_overlay`), write memory, continue.

        Returns how long the guest was stopped. The caller decides what the files mean.
        """
        async with self._lock:
            was_running = await self.status() == "running"
            t0 = time.perf_counter()
            await self.qmp("stop")
            try:
                if new_top is not None:
                    # Must come before migrate: the frozen layer is what the state refers to.
                    await self.put_overlay(new_top)
                await self.migrate_to(state_file, timeout)
            finally:
                if was_running and self.alive():
                    await self.qmp("cont")
            return time.perf_counter() - t0

    async def disk_size(self) -> int:
        """The disk's virtual size in bytes, as QEMU has it (a resize may be newer than the
        image headers say)."""
        for block in await self.qmp("query-block"):
            if block.get("device") == "d0":
                return int(block["inserted"]["image"]["virtual-size"])
        raise BackendError("QEMU has no disk d0")

    async def put_overlay(self, top: Path) -> None:
        """Make `top` (a qcow2 backed by the current top layer) the disk's writable layer.

        QEMU gets the file open, not its path: it may run as a user that cannot reach the
        state dir (`confine`). The fd goes into an fd set (`add-fd`, its opaque the path, which
        `live_chain` reads back) and QEMU opens `/dev/fdset/N`, a copy of it, without locks
        (see `argv.TOP_FILE_OPTIONS`). The new node
        opens no backing of its own: it is put over the node already open (`blockdev-snapshot`;
        the path in its header is what a later launch opens).
        """
        fd = os.open(top, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._connected_qmp().send_fd_scm(fd)
            added = await self.qmp("add-fd", {"opaque": str(top)})
        finally:
            os.close(fd)
        fdset = int(added["fdset-id"])
        node = f"layer-{os.urandom(8).hex()}"
        try:
            await self.qmp(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": node,
                    "file": {
                        "driver": "file",
                        "filename": f"{FDSET_PREFIX}{fdset}",
                        "locking": "off",
                    },
                    "backing": None,
                },
            )
            try:
                await self.qmp("blockdev-snapshot", {"node": "d0", "overlay": node})
            except BackendError:
                with contextlib.suppress(BackendError):
                    await self.qmp("blockdev-del", {"node-name": node})
                raise
        except BackendError:
            with contextlib.suppress(BackendError):
                await self.qmp("remove-fd", {"fdset-id": fdset})
            raise

    async def set_ignore_shared(self, on: bool) -> None:
        """The migration capability that leaves file-backed (template) memory out of a state."""
        await self.qmp(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": on}]},
        )

    async def migrate_to(
        self, state_file: Path, timeout: float, *, memory_in_file: bool = False
    ) -> None:
        """Write the guest state to a file; with `memory_in_file`, without the guest memory
        (a memory template's RAM is its file). Otherwise memory is always in the state, also
        for a clone of a template, so any state restores into plain RAM.

        QEMU 7.2 has no file: URI. Instead of `exec:cat > FILE` (a shell, a cat and a pipe in
        between) we hand QEMU the open file over QMP (SCM_RIGHTS + getfd) and migrate to
        `fd:`, so the migration thread writes the file itself: a shorter pause.
        """
        qmp = self._connected_qmp()
        await self.qmp("migrate-set-parameters", {"max-bandwidth": 64 << 30})
        # always said: a clone of a template restored with it on, and must save without
        await self.set_ignore_shared(memory_in_file)
        fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            qmp.send_fd_scm(fd)
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
        with self._connected_qmp().listener("RESET") as listener:
            try:
                await self.agent("reboot", 5.0)
                async with asyncio.timeout(timeout):
                    await listener.get()
                return
            except (BackendError, TimeoutError):
                log.warning("guest %s did not reboot itself; resetting", self.launch_spec.name)
            await self.qmp("system_reset")
