"""A few QEMU processes started ahead of time for the default image's boot snapshot.

Starting QEMU is the part of a restore that does not depend on the snapshot. A pooled
process is launched with everything an instance needs (its own disk layer on the boot
snapshot, a free SSH port, the memory template mapped) and waits for the state; a boot takes
one, renames its directory to the instance's, and hands it the state. A process whose
restore failed is ended, never put back. The pool refills in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import msgspec

from devbox_service.backends.base import BackendError
from devbox_service.backends.qemu.argv import LaunchSpec, socket_dir
from devbox_service.backends.qemu.backend_state import BackendState, Pooled
from devbox_service.backends.qemu.machine import Machine
from devbox_service.backends.qemu.store import SnapshotRecord
from devbox_service.backends.qemu.util import kill_strays, proc_pss_kb

log = logging.getLogger(__name__)

LAUNCHED_IN = "launched_in"  # in an instance directory taken from the pool: where QEMU started


class WarmPool(BackendState):
    """The pool's part of the backend: fill, take, drain."""

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    def _fill_pool(self) -> None:
        """Start bringing the pool up to its size (one filler at a time)."""
        if self.config.warm_pool <= 0 or self._boot is None or self._boot.memory_file is None:
            return
        if self._pool_filler is None or self._pool_filler.done():
            self._pool_filler = asyncio.create_task(self._keep_full(self._boot))

    async def _keep_full(self, boot: SnapshotRecord) -> None:
        while len(self._pool) < self.config.warm_pool:
            try:
                self._pool.append(await self._start_pooled(boot))
            except (BackendError, OSError) as exc:
                log.warning("could not start a pooled QEMU: %s", exc)
                return

    async def _start_pooled(self, boot: SnapshotRecord) -> Pooled:
        name = f"pool-{uuid.uuid4().hex[:12]}"
        d = self.pool_dir / name
        d.mkdir(parents=True)
        top = self.disks / f"{uuid.uuid4().hex}.qcow2"
        self._pending_disks.add(str(top))
        machine: Machine | None = None
        try:
            await self._create_overlay(top, boot.chain[0])
            ls = self._launch_spec(name, d, boot.accel, boot.kernel, boot.initrd, str(top))
            machine = self._new_machine(msgspec.structs.replace(ls, spec=boot.spec))
            await machine.launch(ram=boot.ram, wait_for_state=True)
            return Pooled(machine=machine, snapshot_id=boot.id, top=str(top))
        except BaseException:
            if machine is not None:
                await machine.shutdown(graceful=False)
            self._discard_pooled_files(d, str(top))
            raise

    async def held_memory_mb(self) -> float:
        """The pool's waiting processes (about 35 MB each under TCG, measured)."""
        held = 0.0
        for pooled in self._pool:
            if pooled.machine.pid is not None:
                with contextlib.suppress(OSError, StopIteration):
                    held += proc_pss_kb(pooled.machine.pid) / 1024
        return held

    def _take_pooled(self, snap: SnapshotRecord, instance_dir: Path) -> Pooled | None:
        """A waiting process for `snap`, moved to `instance_dir`; None if there is none."""
        while self._pool:
            pooled = self._pool.pop(0)
            if pooled.snapshot_id != snap.id or not pooled.machine.alive():
                self._end_later(pooled)
                continue
            old = pooled.machine.dir
            try:
                os.rename(old, instance_dir)
                # until the instance's manifest exists, a restart finds its process by this
                (instance_dir / LAUNCHED_IN).write_text(str(old))
                if socket_dir(old) != old:  # sockets kept apart (long paths) follow too
                    os.rename(socket_dir(old), socket_dir(instance_dir))
            except OSError as exc:
                log.warning("could not take a pooled QEMU: %s", exc)
                self._end_later(pooled)
                continue
            launch: LaunchSpec = msgspec.structs.replace(
                pooled.machine.launch_spec,
                name=instance_dir.name,  # what later launches (a wake, a reboot) are named
                dir=str(instance_dir),
                launched_in=str(old),
            )
            pooled.machine.move(launch)
            self._fill_pool()
            return pooled
        self._fill_pool()
        return None

    def _end_later(self, pooled: Pooled) -> None:
        task = asyncio.get_running_loop().create_task(self._end_pooled(pooled))
        self._pool_endings.add(task)
        task.add_done_callback(self._pool_endings.discard)

    async def _end_pooled(self, pooled: Pooled) -> None:
        """End a pooled process that is not used (the files go with it)."""
        await pooled.machine.shutdown(graceful=False)
        self._discard_pooled_files(pooled.machine.dir, pooled.top)

    def _discard_pooled_files(self, d: Path, top: str) -> None:
        shutil.rmtree(d, ignore_errors=True)
        self._pending_disks.discard(top)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(top)

    async def _drain_pool(self) -> None:
        filler, self._pool_filler = self._pool_filler, None
        if filler is not None:
            filler.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError, OSError):
                await filler
        pooled, self._pool = self._pool, []
        for entry in pooled:
            await self._end_pooled(entry)

    def _clear_stale_pool(self) -> None:
        """At start: pooled processes an earlier service left behind are ended."""
        if not self.pool_dir.exists():
            return
        for d in self.pool_dir.iterdir():
            kill_strays(str(socket_dir(d) / "qmp.sock"))
            shutil.rmtree(d, ignore_errors=True)
