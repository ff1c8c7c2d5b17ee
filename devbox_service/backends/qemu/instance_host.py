"""An instance's host side: the host ports forwarded into its guest, and what its QEMU
process costs the host (memory, CPU time).

It stands apart from the lifecycle in `instances` because none of it moves an instance
between states: a forward is added to (or taken from) the running process and recorded in the
launch spec, so a later wake or cold boot puts it on the command line; usage is read from
`/proc`.
"""

from __future__ import annotations

import time

import msgspec

from devbox_service.backends.base import BackendError, InstanceStats, InvalidState
from devbox_service.backends.qemu.backend_state import LIVE, BackendState
from devbox_service.backends.qemu.util import free_port, proc_pss_kb, proc_usage


class InstanceHost(BackendState):
    """The `VMBackend` port-forward and usage operations."""

    def instance_of_guest(self, marker: str) -> str | None:
        """The live instance whose QEMU was launched with `marker` (its process marker, kept
        in the record, so VMs adopted after a restart and pooled processes are found too)."""
        for rec in self._instances.values():
            if rec.state in LIVE and rec.launch.process_marker == marker:
                return rec.id
        return None

    async def expose_port(self, instance_id: str, guest_port: int) -> int:
        if not 0 < guest_port < 65536:
            raise BackendError("guest port out of range", guest_port=guest_port)
        async with self._locked(instance_id) as rec:
            if guest_port == 22:
                return rec.launch.ssh_port
            if guest_port in rec.launch.forwards:
                return rec.launch.forwards[guest_port]
            for attempt in range(3):
                host_port = free_port()
                machine = self._machines.get(instance_id)
                if machine is None:
                    break  # applied on the command line at the next wake
                try:
                    await machine.hmp(f"hostfwd_add n0 tcp:127.0.0.1:{host_port}-:{guest_port}")
                    break
                except BackendError:
                    if attempt == 2:
                        raise
            forwards = {**rec.launch.forwards, guest_port: host_port}
            rec.launch = msgspec.structs.replace(rec.launch, forwards=forwards)
            self._write_instance(rec)
            return host_port

    async def unexpose_port(self, instance_id: str, guest_port: int) -> None:
        async with self._locked(instance_id) as rec:
            host_port = rec.launch.forwards.get(guest_port)
            if host_port is None:
                return
            machine = self._machines.get(instance_id)
            if machine is not None:
                await machine.hmp(f"hostfwd_remove n0 tcp:127.0.0.1:{host_port}", "removed")
            forwards = {g: h for g, h in rec.launch.forwards.items() if g != guest_port}
            rec.launch = msgspec.structs.replace(rec.launch, forwards=forwards)
            self._write_instance(rec)

    async def memory_mb(self, instance_id: str) -> float:
        rec = self._instance(instance_id)
        if rec.state not in LIVE or rec.pid is None:
            raise InvalidState("the VM has no process", state=rec.state)
        try:
            return round(proc_pss_kb(rec.pid) / 1024, 1)
        except (FileNotFoundError, StopIteration) as exc:
            raise InvalidState("the VM process is gone", state="stopped") from exc

    async def stats(self, instance_id: str) -> InstanceStats:
        rec = self._instance(instance_id)
        if rec.state not in LIVE or rec.pid is None:
            return InstanceStats(rss_mb=0.0, cpu_seconds=0.0, uptime_seconds=0.0)
        try:
            rss_kb, cpu = proc_usage(rec.pid)
        except (FileNotFoundError, StopIteration, IndexError) as exc:
            raise InvalidState("the VM process is gone", state="stopped") from exc
        return InstanceStats(
            rss_mb=round(rss_kb / 1024, 1),
            cpu_seconds=cpu,
            uptime_seconds=max(0.0, time.time() - rec.started_at),
        )
