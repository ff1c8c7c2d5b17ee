"""`MemoryBackend`: an in-memory `VMBackend`, for fast tests and demos, never production.

Assembled from `snapshots` (images and snapshots) over `hooks` (the test hooks) and `state`
(the shared records); this module adds the lifecycle and the instances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    InstanceInfo,
    InstanceState,
    InstanceStats,
    InvalidState,
    MachineSpec,
    QMPFailed,
    VMBackend,
    check_id,
)
from devbox_service.backends.memory.hooks import Hooks
from devbox_service.backends.memory.records import LIVE, InstanceRecord
from devbox_service.backends.memory.snapshots import Snapshots


class MemoryBackend(Snapshots, Hooks, VMBackend):
    """VMs as dict entries; same states, errors and id rules as `QemuBackend`."""

    name = "memory"

    def __init__(
        self,
        *,
        spec: MachineSpec | None = None,
        delay: float = 0.0,
        ssh_key_path: str = "/nonexistent/devbox-memory-backend/id_ed25519",
    ) -> None:
        super().__init__(spec=spec or MachineSpec(), delay=delay, ssh_key_path=ssh_key_path)

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-adopt live VMs; those whose process died are now reported `stopped`."""
        self._enter("start")
        for rec in self._instances.values():
            if rec.state in LIVE:
                if rec.dead:
                    rec.state, rec.dead = InstanceState.STOPPED, False
                rec.connected = rec.state in LIVE
        self.started = True

    async def close(self) -> None:
        """Drop the QMP connections: VMs keep running, but until `start` the backend cannot
        pause/save/... them (InvalidState), as the driver after `close`."""
        self._enter("close")
        for rec in self._instances.values():
            rec.connected = False
        self.started = False

    async def reconcile(self, instance_ids: set[str], snapshot_ids: set[str]) -> list[str]:
        self._enter("reconcile", set(instance_ids), set(snapshot_ids))
        removed: list[str] = []
        for iid in list(self._instances):
            if iid not in instance_ids:
                await self._delete(iid)
                removed.append(iid)
        for sid in list(self._snapshots):
            if sid not in snapshot_ids:  # the boot snapshot is not in this dict: always kept
                del self._snapshots[sid]
                removed.append(sid)
        return removed

    # instances -------------------------------------------------------------------------------

    async def boot(self, snapshot_id: str, instance_id: str) -> InstanceInfo:
        self._enter("boot", snapshot_id, instance_id, fire=False)
        return await self._boot_one(
            snapshot_id, instance_id, "boot", targets={snapshot_id, instance_id}, untargeted=True
        )

    async def branch(self, snapshot_id: str, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        """Boot all ids concurrently; if one fails, delete the others and raise its error."""
        ids = list(instance_ids)
        self._enter("branch", snapshot_id, tuple(ids), fire=False)
        if len(set(ids)) != len(ids):
            raise AlreadyExists("duplicate instance ids", ids=ids)
        results = await asyncio.gather(
            *(
                self._boot_one(snapshot_id, iid, "branch", targets={iid}, untargeted=n == 0)
                for n, iid in enumerate(ids)
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for iid, r in zip(ids, results, strict=True):
                if not isinstance(r, BaseException):
                    await self._delete(iid)
            raise failures[0]
        return [r for r in results if isinstance(r, InstanceInfo)]

    async def get_instance(self, instance_id: str) -> InstanceInfo:
        self._enter("get_instance", instance_id)
        return self._instance(instance_id).info(self.ssh_key_path)

    async def list_instances(self) -> list[InstanceInfo]:
        self._enter("list_instances")
        return [r.info(self.ssh_key_path) for r in self._instances.values()]

    async def pause(self, instance_id: str) -> InstanceInfo:
        self._enter("pause", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state is not InstanceState.RUNNING:
                raise InvalidState("only a running instance can be paused", state=rec.state)
            self._live(rec)
            rec.state = InstanceState.PAUSED
            return rec.info(self.ssh_key_path)

    async def resume(self, instance_id: str) -> InstanceInfo:
        self._enter("resume", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state is not InstanceState.PAUSED:
                raise InvalidState("only a paused instance can be resumed", state=rec.state)
            self._live(rec)
            rec.state = InstanceState.RUNNING
            return rec.info(self.ssh_key_path)

    async def reboot(self, instance_id: str) -> InstanceInfo:
        """Running or paused -> running (a paused guest is continued first)."""
        self._enter("reboot", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            self._live(rec)
            rec.state = InstanceState.RUNNING
            return rec.info(self.ssh_key_path)

    async def stop(self, instance_id: str) -> InstanceInfo:
        """Any state -> stopped (a standby memory image is dropped; stopped stays stopped)."""
        self._enter("stop", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state in LIVE:
                self._live(rec)
            rec.state, rec.connected = InstanceState.STOPPED, False
            return rec.info(self.ssh_key_path)

    async def delete(self, instance_id: str) -> None:
        self._enter("delete", instance_id)
        await self._delete(instance_id)

    async def standby(self, instance_id: str) -> InstanceInfo:
        """Running or paused -> standby (no VM process; `wake` brings it back running)."""
        self._enter("standby", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            self._live(rec)
            rec.state, rec.connected = InstanceState.STANDBY, False
            return rec.info(self.ssh_key_path)

    async def wake(self, instance_id: str) -> InstanceInfo:
        """Standby (restore) or stopped (cold boot) -> running; other states are refused."""
        self._enter("wake", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state not in (InstanceState.STANDBY, InstanceState.STOPPED):
                raise InvalidState("instance is not in standby or stopped", state=rec.state)
            rec.state, rec.connected, rec.dead = InstanceState.RUNNING, True, False
            rec.started_at = time.time()
            return rec.info(self.ssh_key_path)

    async def expose_port(self, instance_id: str, guest_port: int) -> int:
        """Same host port for the same guest port; 22 is the SSH port; works in any state
        (a VM not running gets the forward when it next starts)."""
        self._enter("expose_port", instance_id, guest_port)
        if not 0 < guest_port < 65536:
            raise BackendError("guest port out of range", guest_port=guest_port)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if guest_port == 22:
                return rec.ssh_port
            if guest_port in rec.forwards:
                return rec.forwards[guest_port]
            if rec.dead and rec.connected:  # hostfwd_add over a QMP socket nobody serves
                raise QMPFailed(
                    "HMP hostfwd_add failed", command="hostfwd_add", error="connection lost"
                )
            host_port = self._new_port()
            rec.forwards[guest_port] = host_port
            return host_port

    async def unexpose_port(self, instance_id: str, guest_port: int) -> None:
        """Forget the forward (nothing if there is none; SSH stays)."""
        self._enter("unexpose_port", instance_id, guest_port)
        async with self._lock(instance_id):
            self._instance(instance_id).forwards.pop(guest_port, None)

    async def reboot_into(self, instance_id: str, spec: MachineSpec) -> InstanceInfo:
        self._enter("reboot_into", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state in LIVE:
                self._live(rec)
            rec.spec = MachineSpec(
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                disk_mb=max(spec.disk_mb, rec.spec.disk_mb),
            )
            rec.state, rec.started_at = InstanceState.RUNNING, time.time()
            rec.connected, rec.dead = True, False
            return rec.info(self.ssh_key_path)

    async def grow_disk(self, instance_id: str, disk_mb: int) -> InstanceInfo:
        self._enter("grow_disk", instance_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if disk_mb > rec.spec.disk_mb:
                if rec.state is not InstanceState.RUNNING:
                    raise InvalidState("only a running instance's disk can grow", state=rec.state)
                self._live(rec)
                rec.spec = MachineSpec(
                    vcpus=rec.spec.vcpus, memory_mb=rec.spec.memory_mb, disk_mb=disk_mb
                )
            return rec.info(self.ssh_key_path)

    async def stats(self, instance_id: str) -> InstanceStats:
        """Made-up usage of a live VM (RSS = its memory size); zeros if it has no process."""
        self._enter("stats", instance_id)
        rec = self._instance(instance_id)
        if rec.state not in LIVE:
            return InstanceStats(rss_mb=0.0, cpu_seconds=0.0, uptime_seconds=0.0)
        if rec.dead:
            raise InvalidState("the VM process is gone", state="stopped")
        uptime = max(0.0, time.time() - rec.started_at)
        return InstanceStats(
            rss_mb=float(rec.spec.memory_mb), cpu_seconds=0.0, uptime_seconds=uptime
        )

    async def memory_mb(self, instance_id: str) -> float:
        """A live VM's made-up PSS (its memory size); InvalidState without a process, as the
        contract says (the base class's default would report 0 from `stats`)."""
        self._enter("memory_mb", instance_id)
        rec = self._instance(instance_id)
        if rec.state not in LIVE:
            raise InvalidState("the VM has no process", state=rec.state)
        if rec.dead:
            raise InvalidState("the VM process is gone", state="stopped")
        return float(rec.spec.memory_mb)

    # the boot that boot and branch share -----------------------------------------------------

    async def _boot_one(
        self,
        snapshot_id: str,
        instance_id: str,
        method: str,
        *,
        targets: Collection[str],
        untargeted: bool,
    ) -> InstanceInfo:
        """The driver's boot: checks, then the slow restore (`delay`), where injected
        failures fire; the instance exists only once it is running."""
        check_id("instance", instance_id)
        snap = self._snapshot(snapshot_id)
        async with self._lock(instance_id):
            if instance_id in self._instances:
                raise AlreadyExists(f"instance {instance_id!r} already exists", id=instance_id)
            self._booting += 1
            self.max_concurrent_boots = max(self.max_concurrent_boots, self._booting)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self._booting -= 1
            self._fire(method, targets, untargeted=untargeted)
            rec = InstanceRecord(
                id=instance_id,
                snapshot_id=snapshot_id,
                parent_snapshot_id=snapshot_id,
                image_id=snap.image_id,
                state=InstanceState.RUNNING,
                spec=snap.spec,
                chain=[self._new_layer(), *snap.chain],
                ssh_port=self._new_port(),
                started_at=time.time(),
            )
            self._instances[instance_id] = rec
            return rec.info(self.ssh_key_path)


__all__ = ["MemoryBackend"]
