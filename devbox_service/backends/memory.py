"""`MemoryBackend`: an in-memory `VMBackend`, for fast tests and demos, never production.

No QEMU, no disks, no guests: records in dicts, so nothing runs in a "VM" and nothing
survives the process. It copies the observable behaviour of `QemuBackend` (states, which call
raises what in which state, id checks, "already exists", branch roll-back, reference-counted
disk layers, lazily noticed VM deaths), so a service test that passes here does not rely on
anything the real driver would refuse; tests/contract runs the same checks on both.

Test hooks (plain attributes and methods):

- `delay`: seconds every boot (and each boot of a branch) takes, under the instance's lock,
  after the argument checks; lets a test observe a devbox in `provisioning`.
- `fail_next(method, exc, target=None)`: the next call of `method` raises `exc` instead of
  doing anything. Queued failures fire once each, oldest first. See `fail_next` for where.
- `calls`: every public call as `(method, args)`, in call order, recorded before any check.
- `kill(instance_id)`: the VM process dies; see `kill` for what the backend then reports.
- `disk_layers()`: the disk layers records still reference (the fake's disk pool).
- `max_concurrent_boots`: the most boots ever in their restore (`delay`) at once; shows that
  a branch boots concurrently without timing it.

SSH endpoints point at 127.0.0.1 ports that were free when handed out (nothing listens):
whatever runs on this backend must not need SSH.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import socket
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    ImageInfo,
    InstanceInfo,
    InstanceState,
    InstanceStats,
    InvalidState,
    MachineSpec,
    NotFound,
    ProgressCallback,
    QMPFailed,
    SnapshotInfo,
    SSHEndpoint,
    VMBackend,
    check_id,
)

_LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)
_METHODS = frozenset(VMBackend.__abstractmethods__)
_RECIPE = hashlib.sha256(b"devbox memory backend").hexdigest()


@dataclass
class _Instance:
    """What the driver keeps in an instance manifest, plus the fake's process flags."""

    id: str
    snapshot_id: str  # booted from
    parent_snapshot_id: str  # latest snapshot of its lineage (booted from, or last saved)
    image_id: str
    state: InstanceState
    spec: MachineSpec
    chain: list[str]  # disk layers, top (writable) first
    ssh_port: int
    forwards: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0
    connected: bool = True  # the backend holds a QMP connection to its VM (lost on close)
    dead: bool = False  # the VM process died and the backend has not noticed yet

    def info(self, key_path: str) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            snapshot_id=self.snapshot_id,
            state=self.state,
            spec=self.spec,
            ssh=SSHEndpoint(
                host="127.0.0.1", port=self.ssh_port, username="root", private_key_path=key_path
            ),
            exposed_ports=dict(self.forwards),
            started_at=self.started_at,
        )


@dataclass(frozen=True)
class _Snapshot:
    id: str
    image_id: str
    parent_snapshot_id: str | None
    spec: MachineSpec
    chain: tuple[str, ...]  # frozen layers, top first
    size_bytes: int
    created_at: float
    boot: bool = False

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            id=self.id,
            image_id=self.image_id,
            parent_snapshot_id=self.parent_snapshot_id,
            spec=self.spec,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class _Failure:
    method: str
    target: str | None
    exc: Exception


class MemoryBackend(VMBackend):
    """VMs as dict entries; same states, errors and id rules as `QemuBackend`."""

    name = "memory"

    def __init__(
        self,
        *,
        spec: MachineSpec | None = None,
        delay: float = 0.0,
        ssh_key_path: str = "/nonexistent/devbox-memory-backend/id_ed25519",
    ) -> None:
        self.spec = spec or MachineSpec()
        self.delay = delay
        self.ssh_key_path = ssh_key_path
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.max_concurrent_boots = 0
        self._booting = 0  # boots in their restore right now
        self.started = False  # start() was called (and close() not since)
        self._failures: list[_Failure] = []
        self._instances: dict[str, _Instance] = {}
        self._snapshots: dict[str, _Snapshot] = {}  # user snapshots; the boot one is apart
        self._image: ImageInfo | None = None
        self._boot: _Snapshot | None = None
        self._sized_boots: dict[MachineSpec, _Snapshot] = {}  # image_snapshot's other sizes
        self._locks: dict[str, asyncio.Lock] = {}
        self._ports: set[int] = set()
        self._layer_ids = itertools.count(1)

    # test hooks ------------------------------------------------------------------------------

    def fail_next(self, method: str, exc: Exception, *, target: str | None = None) -> None:
        """Make the next call of `method` (a `VMBackend` method name) raise `exc`.

        With `target`, only a call one of whose ids equals it (instance or snapshot id) fires.
        Most methods fail on entry, before any check, and change nothing. `boot` fails after
        its id checks and `delay`, where a real restore would fail; nothing is left behind.
        `branch` fails in the boot of `target` (or of its first id), after the other ids have
        booted, so the roll-back runs: they are deleted and `exc` is raised. A branch's boots
        are not calls of `boot` and do not take `boot` failures.
        """
        if method not in _METHODS:
            raise ValueError(f"{method!r} is not a VMBackend method")
        self._failures.append(_Failure(method, target, exc))

    @property
    def pending_failures(self) -> list[tuple[str, str | None]]:
        """Failures queued by `fail_next` that have not fired, as (method, target)."""
        return [(f.method, f.target) for f in self._failures]

    def calls_to(self, method: str) -> list[tuple[object, ...]]:
        """The argument tuples of every recorded call of `method`."""
        return [args for name, args in self.calls if name == method]

    def kill(self, instance_id: str) -> None:
        """Simulate the VM process of a running or paused instance dying (crash, OOM kill).

        As in the driver, the instance does not disappear and its record is not updated at
        once: `get_instance`/`list_instances` still report the old state. The backend notices
        when it next needs the process: save, pause, resume, reboot, standby and stop then
        raise `InvalidState(state="stopped")` and the instance is `stopped` from then on (a
        second `stop` succeeds, `wake` cold-boots it); `start()` marks it `stopped` too.
        `stats` raises `InvalidState(state="stopped")` without updating the record, and
        `expose_port` of a new port raises `QMPFailed`. `delete` works as usual.
        """
        rec = self._instance(instance_id)
        if rec.state not in _LIVE or rec.dead:
            raise InvalidState(f"instance {instance_id} has no VM process", state=rec.state)
        rec.dead = True

    def disk_layers(self) -> set[str]:
        """Layers referenced by an instance or snapshot: what the driver keeps on disk."""
        used: set[str] = set()
        for inst in self._instances.values():
            used.update(inst.chain)
        for snap in self._snapshots.values():
            used.update(snap.chain)
        if self._boot is not None:
            used.update(self._boot.chain)
        for sized in self._sized_boots.values():
            used.update(sized.chain)
        return used

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-adopt live VMs; those whose process died are now reported `stopped`."""
        self._enter("start")
        for rec in self._instances.values():
            if rec.state in _LIVE:
                if rec.dead:
                    rec.state, rec.dead = InstanceState.STOPPED, False
                rec.connected = rec.state in _LIVE
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

    # images ----------------------------------------------------------------------------------

    async def ensure_image(self, progress: ProgressCallback | None = None) -> ImageInfo:
        """Create the default image and its boot snapshot once; later calls return them."""
        self._enter("ensure_image")
        say = progress or (lambda _line: None)
        if self._image is None or self._boot is None:
            now = time.time()
            image_id = f"debian-bookworm-{_RECIPE[:12]}"
            s = self.spec
            boot_id = f"boot-{_RECIPE[:12]}-microvm-kvm-{s.vcpus}c-{s.memory_mb}m-{_RECIPE[-8:]}"
            say(f"boot snapshot {boot_id}: ready")
            self._boot = _Snapshot(
                id=boot_id,
                image_id=image_id,
                parent_snapshot_id=None,
                spec=self.spec,
                chain=(self._new_layer(), self._new_layer()),  # boot layer on the image disk
                size_bytes=_size(self.spec),
                created_at=now,
                boot=True,
            )
            self._image = ImageInfo(
                id=image_id,
                name="debian-bookworm",
                description="Debian minbase with openssh-server, tmux, git, curl, python3, sudo",
                boot_snapshot_id=boot_id,
                default=True,
                created_at=now,
            )
        return self._image

    async def list_images(self) -> list[ImageInfo]:
        self._enter("list_images")
        return [] if self._image is None else [self._image]

    async def image_snapshot(self, image_id: str, spec: MachineSpec) -> SnapshotInfo:
        self._enter("image_snapshot", image_id)
        if self._image is None or self._boot is None or image_id != self._image.id:
            raise NotFound(f"no image {image_id!r}", image_id=image_id)
        if spec.disk_mb < self.spec.disk_mb:
            raise BackendError("a disk smaller than the image", disk_mb=spec.disk_mb)
        if spec == self.spec:
            return self._boot.info()
        if spec not in self._sized_boots:
            sid = f"{self._boot.id}-{spec.vcpus}c-{spec.memory_mb}m-{spec.disk_mb}d"
            self._sized_boots[spec] = _Snapshot(
                id=sid,
                image_id=image_id,
                parent_snapshot_id=None,
                spec=spec,
                chain=(self._new_layer(), *self._boot.chain[1:]),
                size_bytes=_size(spec),
                created_at=time.time(),
                boot=True,
            )
        return self._sized_boots[spec].info()

    # snapshots -------------------------------------------------------------------------------

    async def save(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        """Checkpoint a running or paused instance; it keeps its state and moves to a new
        top layer, the snapshot keeps the old chain."""
        self._enter("save", instance_id, snapshot_id)
        check_id("snapshot", snapshot_id)
        if snapshot_id in self._snapshots or snapshot_id.startswith("boot-"):
            raise AlreadyExists(f"snapshot {snapshot_id!r} already exists", id=snapshot_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            self._live(rec)
            snap = _Snapshot(
                id=snapshot_id,
                image_id=rec.image_id,
                parent_snapshot_id=rec.parent_snapshot_id,
                spec=rec.spec,
                chain=tuple(rec.chain),
                size_bytes=_size(rec.spec),
                created_at=time.time(),
            )
            rec.chain = [self._new_layer(), *rec.chain]
            rec.parent_snapshot_id = snapshot_id
            self._snapshots[snapshot_id] = snap
            return snap.info()

    async def list_snapshots(self) -> list[SnapshotInfo]:
        """The boot snapshot first (once the image exists), then user snapshots."""
        self._enter("list_snapshots")
        out = [s.info() for s in self._snapshots.values()]
        if self._boot is not None:
            out.insert(0, self._boot.info())
        return out

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        self._enter("get_snapshot", snapshot_id)
        return self._snapshot(snapshot_id).info()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot; its layers stay while instances or snapshots still use them."""
        self._enter("delete_snapshot", snapshot_id)
        if self._snapshot(snapshot_id).boot:
            raise InvalidState("boot snapshots belong to their image", state="boot")
        del self._snapshots[snapshot_id]

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
            if rec.state in _LIVE:
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
            if rec.state in _LIVE:
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
        if rec.state not in _LIVE:
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
        if rec.state not in _LIVE:
            raise InvalidState("the VM has no process", state=rec.state)
        if rec.dead:
            raise InvalidState("the VM process is gone", state="stopped")
        return float(rec.spec.memory_mb)

    # helpers ---------------------------------------------------------------------------------

    def _enter(self, method: str, *args: object, fire: bool = True) -> None:
        """Record a public call and, unless the method fires later itself, fail it if asked."""
        self.calls.append((method, args))
        if fire:
            self._fire(method, {a for a in args if isinstance(a, str)}, untargeted=True)

    def _fire(self, method: str, ids: Collection[str], *, untargeted: bool) -> None:
        for n, f in enumerate(self._failures):
            if f.method == method and (f.target in ids or (untargeted and f.target is None)):
                del self._failures[n]
                raise f.exc

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
            rec = _Instance(
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

    async def _delete(self, instance_id: str) -> None:
        async with self._lock(instance_id):
            self._instance(instance_id)
            del self._instances[instance_id]
        self._locks.pop(instance_id, None)

    def _instance(self, instance_id: str) -> _Instance:
        rec = self._instances.get(instance_id)
        if rec is None:
            raise NotFound(f"no instance {instance_id!r}", instance_id=instance_id)
        return rec

    def _snapshot(self, snapshot_id: str) -> _Snapshot:
        snap = self._snapshots.get(snapshot_id)
        if snap is None and self._boot is not None and self._boot.id == snapshot_id:
            snap = self._boot
        if snap is None:
            snap = next((b for b in self._sized_boots.values() if b.id == snapshot_id), None)
        if snap is None:
            raise NotFound(f"no snapshot {snapshot_id!r}", snapshot_id=snapshot_id)
        return snap

    def _live(self, rec: _Instance) -> None:
        """The driver's `_live_machine`: a VM process must exist; a dead one is noticed here."""
        if rec.state not in _LIVE or not rec.connected:
            raise InvalidState(f"instance {rec.id} is not running", state=rec.state)
        if rec.dead:
            rec.state, rec.dead, rec.connected = InstanceState.STOPPED, False, False
            raise InvalidState(f"the VM of {rec.id} has exited", state=rec.state)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _new_layer(self) -> str:
        return f"layer-{next(self._layer_ids)}"

    def _new_port(self) -> int:
        """A loopback port free right now and never handed out before by this backend."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port


def _size(spec: MachineSpec) -> int:
    """A plausible snapshot size: the memory image dominates."""
    return spec.memory_mb * 1024 * 1024


__all__ = ["MemoryBackend"]
