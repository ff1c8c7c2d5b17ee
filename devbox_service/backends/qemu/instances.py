"""Instance lifecycle: boot from a snapshot, branch, pause, reboot, stop, standby, wake, delete.

Instances start by restoring a snapshot (`-incoming`) onto a fresh overlay of its frozen disk;
a clock step and an RNG reseed over the agent follow every restore. Only a stopped instance,
which has nothing in memory, boots cold from its disk. Port forwards and process usage, which
move no instance between states, are `instance_host`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    GuestUnreachable,
    InstanceInfo,
    InstanceState,
    InvalidState,
    MachineSpec,
    check_id,
)
from devbox_service.backends.qemu.argv import GuestRam
from devbox_service.backends.qemu.backend_state import LIVE, BackendState
from devbox_service.backends.qemu.guest_shell import grow_root_filesystem, wait_ssh_banner
from devbox_service.backends.qemu.machine import LaunchFailed, Machine
from devbox_service.backends.qemu.store import InstanceRecord
from devbox_service.backends.qemu.util import (
    free_port,
    fsync_path,
    kill_strays,
    pid_alive,
    run,
    tail,
)

log = logging.getLogger(__name__)


class Instances(BackendState):
    """The `VMBackend` instance operations."""

    async def boot(self, snapshot_id: str, instance_id: str) -> InstanceInfo:
        check_id("instance", instance_id)
        snap = self._snapshot(snapshot_id)
        async with self._lock(instance_id):
            if instance_id in self._instances or (self.instances_dir / instance_id).exists():
                raise AlreadyExists(f"instance {instance_id!r} already exists", id=instance_id)
            d = self.instances_dir / instance_id
            pooled = self._take_pooled(snap, d)
            if pooled is None:
                d.mkdir(parents=True)
                top = self.disks / f"{uuid.uuid4().hex}.qcow2"
                self._pending_disks.add(str(top))
            else:
                top = Path(pooled.top)  # stays pending until the record holds it
            try:
                if pooled is None:
                    await self._create_overlay(top, snap.chain[0])
                    ls = self._launch_spec(
                        instance_id, d, snap.accel, snap.kernel, snap.initrd, str(top), snap.machine
                    )
                    ls = msgspec.structs.replace(ls, spec=snap.spec)
                rec = InstanceRecord(
                    id=instance_id,
                    snapshot_id=snapshot_id,
                    parent_snapshot_id=snapshot_id,
                    image_id=snap.image_id,
                    state=InstanceState.RUNNING,
                    launch=ls if pooled is None else pooled.machine.launch_spec,
                    chain=[str(top), *snap.chain],
                    created_at=time.time(),
                )
                waiting = None if pooled is None else pooled.machine
                await self._restore(rec, snap.state_file, snap.ram, waiting)
                self._instances[instance_id] = rec
                self._write_instance(rec)  # the instance exists from here on
                return rec.info(self._key_path)
            except BaseException:
                machine = self._machines.pop(instance_id, None)
                if machine is not None:
                    await machine.shutdown(graceful=False)
                elif pooled is not None:  # a failed restore: the process is never reused
                    await pooled.machine.shutdown(graceful=False)
                shutil.rmtree(d, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    top.unlink()
                raise
            finally:
                self._pending_disks.discard(str(top))

    async def _restore(
        self,
        rec: InstanceRecord,
        state_file: str,
        ram: GuestRam | None = None,
        waiting: Machine | None = None,
    ) -> None:
        """Start QEMU on `rec.launch` from a state file (its memory in `ram`, a template, if
        the state has none), or hand the state to a `waiting` one (the warm pool's); ready =
        sshd banner + guest synced."""
        try:
            async with asyncio.timeout(self.config.restore_timeout):
                if waiting is None:
                    machine = await self._launch(rec, Path(state_file), ram)
                else:
                    machine = waiting
                    await machine.restore(Path(state_file))
                self._machines[rec.id] = machine
                rec.pid = machine.pid
                await machine.wait_incoming(self.config.restore_timeout)
                rec.started_at = time.time()
                rec.state = InstanceState.RUNNING
                await asyncio.gather(
                    machine.sync_guest(self.config.restore_timeout),
                    wait_ssh_banner(rec.launch.ssh_port, self.config.restore_timeout, machine),
                )
        except BaseException as exc:
            # Whoever called keeps the record as it was (standby stays standby); no VM lingers.
            failed = self._machines.pop(rec.id, None)
            if failed is not None:
                await failed.shutdown(graceful=False)
            rec.pid = None
            if isinstance(exc, TimeoutError):
                raise GuestUnreachable(
                    f"instance {rec.id} not ready in {self.config.restore_timeout} s",
                    console_tail=tail(self._dir(rec) / "console.log"),
                ) from None
            raise

    async def _launch(
        self, rec: InstanceRecord, state_file: Path | None, ram: GuestRam | None = None
    ) -> Machine:
        """Launch with the recorded ports; new ones only if another process took them."""
        if rec.launch.launched_in:  # a new process of a once pooled instance starts here
            rec.launch = msgspec.structs.replace(rec.launch, launched_in="")
        for attempt in range(3):
            machine = self._new_machine(rec.launch)
            try:
                await machine.launch(state_file=state_file, ram=ram)
                return machine
            except LaunchFailed as exc:
                if "forward" not in exc.output or attempt == 2:
                    raise
                forwards = {guest: free_port() for guest in rec.launch.forwards}
                rec.launch = msgspec.structs.replace(
                    rec.launch, ssh_port=free_port(), forwards=forwards
                )
        raise AssertionError("unreachable")

    async def branch(self, snapshot_id: str, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        if len(set(instance_ids)) != len(instance_ids):
            raise AlreadyExists("duplicate instance ids", ids=list(instance_ids))
        results = await asyncio.gather(
            *(self.boot(snapshot_id, iid) for iid in instance_ids), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for iid, r in zip(instance_ids, results, strict=True):
                if not isinstance(r, BaseException):
                    await self.delete(iid)
            raise failures[0]
        return [r for r in results if isinstance(r, InstanceInfo)]

    async def get_instance(self, instance_id: str) -> InstanceInfo:
        return self._instance(instance_id).info(self._key_path)

    async def list_instances(self) -> list[InstanceInfo]:
        return [r.info(self._key_path) for r in self._instances.values()]

    async def pause(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            if rec.state is not InstanceState.RUNNING:
                raise InvalidState("only a running instance can be paused", state=rec.state)
            await self._live_machine(rec).qmp("stop")
            rec.state = InstanceState.PAUSED
            return self._commit(rec)

    async def resume(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            if rec.state is not InstanceState.PAUSED:
                raise InvalidState("only a paused instance can be resumed", state=rec.state)
            machine = self._live_machine(rec)
            await machine.qmp("cont")
            rec.state = InstanceState.RUNNING
            self._write_instance(rec)
            # The guest clock stood still while paused; step it (a few ms over the agent).
            try:
                await machine.sync_guest(5.0)
            except BackendError as exc:
                log.warning("clock step after resume of %s failed: %s", instance_id, exc)
            return rec.info(self._key_path)

    async def reboot(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            machine = self._live_machine(rec)
            if rec.state is InstanceState.PAUSED:
                await machine.qmp("cont")
            try:
                async with asyncio.timeout(self.config.boot_timeout):
                    await machine.reboot(self.config.boot_timeout)
                    rec.state = InstanceState.RUNNING
                    self._write_instance(rec)
                    await wait_ssh_banner(rec.launch.ssh_port, self.config.boot_timeout, machine)
                    await machine.sync_guest(self.config.boot_timeout)
            except TimeoutError:
                raise GuestUnreachable(
                    f"{instance_id} did not come back after reboot",
                    console_tail=machine.console_tail(),
                ) from None
            return rec.info(self._key_path)

    async def reboot_into(self, instance_id: str, spec: MachineSpec) -> InstanceInfo:
        await self.stop(instance_id)
        async with self._locked(instance_id) as rec:
            grows = spec.disk_mb > rec.launch.spec.disk_mb
            if grows:
                await run(
                    [self.config.qemu_img, "resize", rec.chain[0], f"{spec.disk_mb}M"], timeout=30
                )
            kept = msgspec.structs.replace(spec, disk_mb=max(spec.disk_mb, rec.launch.spec.disk_mb))
            rec.launch = msgspec.structs.replace(rec.launch, spec=kept)
            self._write_instance(rec)
            await self._cold_boot(rec)
            if grows:
                await grow_root_filesystem(rec.launch.ssh_port, self._key_path, timeout=120.0)
            return rec.info(self._key_path)

    async def grow_disk(self, instance_id: str, disk_mb: int) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            if disk_mb <= rec.launch.spec.disk_mb:
                return rec.info(self._key_path)
            if rec.state is not InstanceState.RUNNING:
                raise InvalidState("only a running instance's disk can grow", state=rec.state)
            machine = self._live_machine(rec)
            await machine.settle_flattening(wait=10.0)  # a stream job holds the disk's size
            await machine.qmp("block_resize", {"device": "d0", "size": disk_mb * 1024 * 1024})
            spec = msgspec.structs.replace(rec.launch.spec, disk_mb=disk_mb)
            rec.launch = msgspec.structs.replace(rec.launch, spec=spec)
            self._write_instance(rec)  # the block device is larger from here on
            await grow_root_filesystem(rec.launch.ssh_port, self._key_path, timeout=120.0)
            return rec.info(self._key_path)

    async def stop(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            if rec.state in LIVE:
                machine = self._live_machine(rec)
                if rec.state is InstanceState.PAUSED:
                    await machine.qmp("cont")
                try:
                    await machine.agent("poweroff", 5.0)
                    clean = await machine.wait_exit(30.0)
                except BackendError:
                    clean = False
                if not clean:
                    log.warning("%s did not power off; ending QEMU", instance_id)
                await machine.shutdown(graceful=True)
                self._machines.pop(instance_id, None)
            elif rec.state is InstanceState.STANDBY:
                with contextlib.suppress(FileNotFoundError):
                    self._standby_file(rec).unlink()
            rec.state, rec.pid = InstanceState.STOPPED, None
            return self._commit(rec)

    async def delete(self, instance_id: str) -> None:
        async with self._locked(instance_id) as rec:
            machine = self._machines.pop(instance_id, None)
            try:
                if machine is not None:
                    await machine.shutdown(graceful=False)
                elif rec.pid is not None and pid_alive(rec.pid, rec.launch.process_marker):
                    kill_strays(rec.launch.process_marker)
            finally:
                del self._instances[instance_id]
                shutil.rmtree(self._dir(rec), ignore_errors=True)
                self._gc_disks()
        self._locks.pop(instance_id, None)

    async def standby(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            machine = self._live_machine(rec)
            final = self._standby_file(rec)
            tmp = final.with_name(final.name + ".tmp")
            try:
                async with asyncio.timeout(self.config.restore_timeout):
                    await machine.settle_flattening(0.0)
                    await machine.qmp("stop")
                    await machine.migrate_to(tmp, self.config.restore_timeout)
            except BaseException:
                with contextlib.suppress(BackendError):
                    await machine.qmp("cont")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            await asyncio.to_thread(fsync_path, tmp)
            os.replace(tmp, final)
            await machine.shutdown(graceful=True)
            self._machines.pop(instance_id, None)
            rec.state, rec.pid = InstanceState.STANDBY, None
            return self._commit(rec)

    async def wake(self, instance_id: str) -> InstanceInfo:
        async with self._locked(instance_id) as rec:
            if rec.state is InstanceState.STANDBY:
                state_file = self._standby_file(rec)
                await self._restore(rec, str(state_file))
                self._write_instance(rec)
                state_file.unlink()  # the disk moves on: that memory image is stale now
            elif rec.state is InstanceState.STOPPED:
                await self._cold_boot(rec)
            else:
                raise InvalidState("instance is not in standby or stopped", state=rec.state)
            return rec.info(self._key_path)

    async def _cold_boot(self, rec: InstanceRecord) -> None:
        """A stopped instance has only its disk: boot it (slow under TCG, but correct)."""
        machine = await self._launch(rec, None)
        try:
            async with asyncio.timeout(self.config.boot_timeout):
                await wait_ssh_banner(rec.launch.ssh_port, self.config.boot_timeout, machine)
                await machine.sync_guest(self.config.boot_timeout)
        except BaseException as exc:
            await machine.shutdown(graceful=False)  # stays stopped; no VM lingers
            if isinstance(exc, TimeoutError):
                raise GuestUnreachable(
                    f"{rec.id} did not boot", console_tail=machine.console_tail()
                ) from None
            raise
        self._machines[rec.id] = machine
        rec.pid, rec.started_at, rec.state = machine.pid, time.time(), InstanceState.RUNNING
        self._write_instance(rec)
