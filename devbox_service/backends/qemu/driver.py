"""`QemuBackend`: the embedded microVM driver behind `VMBackend`.

Instances start only by restoring a snapshot (`-incoming`), never by a cold boot: each image
has a boot snapshot (booted, sshd up) cached beside it. Saves freeze the current disk layer
under a new overlay and write memory to a file; restores put a fresh overlay on the frozen
layer. A clock step and an RNG reseed over the virtio-serial agent follow every restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    BackendError,
    BackendTimeout,
    GuestUnreachable,
    ImageInfo,
    InstanceInfo,
    InstanceState,
    InstanceStats,
    InvalidState,
    NotFound,
    ProgressCallback,
    SnapshotInfo,
    VMBackend,
)
from devbox_service.backends.qemu import image as images
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.machine import (
    KERNEL_APPEND,
    LaunchFailed,
    LaunchSpec,
    Machine,
    host_tsc_khz,
    socket_dir,
    wait_ssh_banner,
)
from devbox_service.backends.qemu.store import InstanceRecord, SnapshotRecord
from devbox_service.backends.qemu.util import (
    check_id,
    free_port,
    fsync_path,
    pid_alive,
    read_json,
    run,
    tail,
    write_json_atomic,
)

log = logging.getLogger(__name__)

_LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)
# Bump when the QEMU command line changes in a way saved guests depend on (devices, ids).
LAUNCH_VERSION = 1


class QemuBackend(VMBackend):
    """VMs as local QEMU processes; see the package docstrings for the file layout."""

    name = "qemu"

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self.root = config.state_path
        self.disks = self.root / "disks"
        self.instances_dir = self.root / "instances"
        self.snapshots_dir = self.root / "snapshots"
        self._instances: dict[str, InstanceRecord] = {}
        self._machines: dict[str, Machine] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._pending_disks: set[str] = set()  # created but not yet in any record
        self._accel: str | None = None
        self._image: images.ImageFiles | None = None
        self._boot: SnapshotRecord | None = None
        self.last_save_pause: float = 0.0  # seconds the guest stood still in the last save

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for d in (self.disks, self.instances_dir, self.snapshots_dir):
            d.mkdir(parents=True, exist_ok=True)
        await self.close()
        self._instances.clear()
        self._snapshots.clear()
        self._load_snapshots()
        for d in sorted(self.instances_dir.iterdir()):
            manifest = d / "manifest.json"
            if not manifest.exists():
                # A boot that never finished: its QEMU (if any) and files go.
                await _kill_strays(str(socket_dir(d) / "qmp.sock"))
                shutil.rmtree(d, ignore_errors=True)
                continue
            rec = msgspec.json.decode(manifest.read_bytes(), type=InstanceRecord)
            self._instances[rec.id] = rec
            if rec.state in _LIVE:
                await self._adopt(rec)
        self._gc_disks()

    async def _adopt(self, rec: InstanceRecord) -> None:
        machine = Machine(self.config.qemu_binary, rec.launch)
        try:
            if rec.pid is None:
                raise BackendError("no pid recorded")
            await machine.adopt(rec.pid)
            status = await machine.status()
            rec.state = InstanceState.PAUSED if status == "paused" else InstanceState.RUNNING
            rec.chain = await _live_chain(machine, rec.chain)
            self._machines[rec.id] = machine
        except BackendError as exc:
            log.warning("instance %s did not survive: %s", rec.id, exc.message)
            await machine.shutdown(graceful=False)
            rec.state = InstanceState.STOPPED
            rec.pid = None
        self._write_instance(rec)

    async def close(self) -> None:
        for machine in self._machines.values():
            await machine.disconnect()
        self._machines.clear()

    async def reconcile(self, instance_ids: set[str], snapshot_ids: set[str]) -> list[str]:
        removed: list[str] = []
        for iid in list(self._instances):
            if iid not in instance_ids:
                await self.delete(iid)
                removed.append(iid)
        for sid, snap in list(self._snapshots.items()):
            if sid not in snapshot_ids and not snap.boot:
                await self.delete_snapshot(sid)
                removed.append(sid)
        return removed

    # images ---------------------------------------------------------------------------------

    async def ensure_image(self, progress: ProgressCallback | None = None) -> ImageInfo:
        say = progress or (lambda _line: None)
        img = await images.ensure_image(self.config, say)
        accel = await self._resolve_accel(img, say)
        boot = await self._ensure_boot_snapshot(img, accel, say)
        self._image, self._boot = img, boot
        return self._image_info(img, boot)

    async def list_images(self) -> list[ImageInfo]:
        if self._image is None or self._boot is None:
            img = images.load_image(self.config)
            accel = self._cached_accel()
            if img is None or accel is None:
                return []
            boot = self._load_boot(img, accel)
            if boot is None:
                return []
            self._image, self._boot = img, boot
        return [self._image_info(self._image, self._boot)]

    def _image_info(self, img: images.ImageFiles, boot: SnapshotRecord) -> ImageInfo:
        return ImageInfo(
            id=img.id,
            name=f"debian-{self.config.suite}",
            description="Debian minbase with openssh-server, tmux, git, curl, python3, sudo",
            boot_snapshot_id=boot.id,
            default=True,
            created_at=img.created_at,
        )

    def _accel_cache(self) -> Path:
        return self.config.cache_path / "accel.json"

    def _accel_key(self) -> str:
        return f"{os.uname().release} {self.config.qemu_binary} {self.config.machine}"

    def _cached_accel(self) -> str | None:
        if self.config.accel != "auto":
            return self.config.accel
        if self._accel is not None:
            return self._accel
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            data = read_json(self._accel_cache())
            if data["key"] == self._accel_key():
                self._accel = str(data["accel"])
        return self._accel

    async def _resolve_accel(self, img: images.ImageFiles, say: ProgressCallback) -> str:
        """KVM if a short probe boot reaches init, else TCG (nested KVM may hang guests)."""
        cached = self._cached_accel()
        if cached is not None:
            return cached
        accel = "tcg"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            say("probing KVM with a short boot ...")
            accel = "kvm" if await self._probe_kvm(img) else "tcg"
        say(f"accelerator: {accel}")
        write_json_atomic(self._accel_cache(), {"key": self._accel_key(), "accel": accel})
        self._accel = accel
        return accel

    async def _probe_kvm(self, img: images.ImageFiles) -> bool:
        work = self.config.cache_path / f"kvm-probe.{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        machine: Machine | None = None
        try:
            disk = work / "disk.qcow2"
            await self._create_overlay(disk, img.disk)
            ls = self._launch_spec("kvm-probe", work, "kvm", img.kernel, img.initrd, str(disk))
            machine = Machine(self.config.qemu_binary, ls)
            await machine.launch(timeout=10)
            async with asyncio.timeout(20):
                while b"devbox: sysinit done" not in _read(machine.console_path):
                    if not machine.alive():
                        return False
                    await asyncio.sleep(0.2)
            return True
        except (TimeoutError, BackendError):
            return False
        finally:
            if machine is not None:
                await machine.shutdown(graceful=False)
            shutil.rmtree(work, ignore_errors=True)

    def _launch_spec(
        self, name: str, d: Path, accel: str, kernel: str, initrd: str, disk: str,
        machine: str | None = None,
    ) -> LaunchSpec:  # fmt: skip
        machine = machine or self.config.machine
        return LaunchSpec(
            name=name,
            dir=str(d),
            machine=machine,
            accel=accel,
            spec=self.config.spec,
            kernel=kernel,
            initrd=initrd,
            disk=disk,
            ssh_port=free_port(),
            tsc_khz=host_tsc_khz() if machine == "microvm" and accel == "tcg" else 0,
        )

    def _boot_dir(self, img: images.ImageFiles, accel: str) -> tuple[str, Path]:
        spec = self.config.spec
        launch = hashlib.sha256(f"{LAUNCH_VERSION} {KERNEL_APPEND}".encode()).hexdigest()[:8]
        key = f"{self.config.machine}-{accel}-{spec.vcpus}c-{spec.memory_mb}m-{launch}"
        return f"boot-{img.recipe_hash[:12]}-{key}", Path(img.dir) / "boot" / key

    def _load_boot(self, img: images.ImageFiles, accel: str) -> SnapshotRecord | None:
        _, d = self._boot_dir(img, accel)
        manifest = d / "manifest.json"
        if not manifest.exists():
            return None
        return msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)

    async def _ensure_boot_snapshot(
        self, img: images.ImageFiles, accel: str, say: ProgressCallback
    ) -> SnapshotRecord:
        """Cold boot once, wait for sshd, save memory + disk: every instance restores this."""
        sid, final = self._boot_dir(img, accel)
        async with images.file_lock(final.parent / ".lock", self.config.build_timeout):
            found = self._load_boot(img, accel)
            if found is not None:
                return found
            work = final.with_name(final.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            machine: Machine | None = None
            try:
                disk = work / "disk.qcow2"
                await self._create_overlay(disk, img.disk)
                ls = self._launch_spec(sid, work, accel, img.kernel, img.initrd, str(disk))
                machine = Machine(self.config.qemu_binary, ls)
                say(f"boot snapshot {sid}: cold boot ({accel}) ...")
                t0 = time.monotonic()
                await machine.launch(timeout=30)
                await wait_ssh_banner(ls.ssh_port, self.config.boot_timeout, machine)
                await machine.agent("ping", timeout=30)
                say(f"boot snapshot {sid}: sshd up after {time.monotonic() - t0:.1f} s; saving")
                await machine.qmp("stop")
                await machine.migrate_to(work / "state", timeout=120)
                await machine.shutdown(graceful=True)
                os.chmod(disk, 0o444)
                for f in (disk, work / "state"):
                    fsync_path(f)
                for extra in ("qemu.log",):
                    with contextlib.suppress(FileNotFoundError):
                        (work / extra).unlink()
                rec = SnapshotRecord(
                    id=sid,
                    image_id=img.id,
                    parent_snapshot_id=None,
                    spec=self.config.spec,
                    machine=self.config.machine,
                    accel=accel,
                    kernel=img.kernel,
                    initrd=img.initrd,
                    chain=[str(final / "disk.qcow2"), img.disk],
                    dir=str(final),
                    size_bytes=_size(work / "state") + _size(disk),
                    created_at=time.time(),
                    boot=True,
                )
                write_json_atomic(work / "manifest.json", msgspec.to_builtins(rec))
                os.replace(work, final)
                fsync_path(final.parent)
                say(f"boot snapshot {sid}: ready")
                return rec
            finally:
                if machine is not None:
                    await machine.shutdown(graceful=False)
                shutil.rmtree(work, ignore_errors=True)

    # snapshots ------------------------------------------------------------------------------

    def _load_snapshots(self) -> None:
        for d in sorted(self.snapshots_dir.iterdir()):
            manifest = d / "manifest.json"
            if d.name.endswith(".tmp") or not manifest.exists():
                # An interrupted save: never offered for boot, removed now.
                shutil.rmtree(d, ignore_errors=True)
                continue
            rec = msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)
            self._snapshots[rec.id] = rec

    def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        rec = self._snapshots.get(snapshot_id)
        if rec is not None:
            return rec
        if self._boot is not None and self._boot.id == snapshot_id:
            return self._boot
        if snapshot_id.startswith("boot-"):
            for manifest in self.config.cache_path.glob("images/*/boot/*/manifest.json"):
                boot = msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)
                if boot.id == snapshot_id:
                    return boot
        raise NotFound(f"no snapshot {snapshot_id!r}", snapshot_id=snapshot_id)

    async def save(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        check_id("snapshot", snapshot_id)
        if snapshot_id in self._snapshots or snapshot_id.startswith("boot-"):
            raise BackendError(f"snapshot {snapshot_id!r} already exists", id=snapshot_id)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            machine = self._live_machine(rec)
            work = self.snapshots_dir / f"{snapshot_id}.tmp"
            final = self.snapshots_dir / snapshot_id
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            new_top = self.disks / f"{uuid.uuid4().hex}.qcow2"
            self._pending_disks.add(str(new_top))
            try:
                async with asyncio.timeout(self.config.restore_timeout):
                    self.last_save_pause = await machine.save_state(
                        work / "state", new_top=new_top, timeout=self.config.restore_timeout
                    )
                old_chain = rec.chain
                rec.chain = [str(new_top), *old_chain]
                rec.launch = msgspec.structs.replace(rec.launch, disk=str(new_top))
                parent = rec.parent_snapshot_id
                rec.parent_snapshot_id = snapshot_id
                self._write_instance(rec)
                frozen = Path(old_chain[0])
                os.chmod(frozen, 0o444)
                await asyncio.to_thread(_fsync_all, [frozen, work / "state"])
                snap = SnapshotRecord(
                    id=snapshot_id,
                    image_id=rec.image_id,
                    parent_snapshot_id=parent,
                    spec=rec.launch.spec,
                    machine=rec.launch.machine,
                    accel=rec.launch.accel,
                    kernel=rec.launch.kernel,
                    initrd=rec.launch.initrd,
                    chain=old_chain,
                    dir=str(final),
                    size_bytes=_size(work / "state") + _size(frozen),
                    created_at=time.time(),
                )
                write_json_atomic(work / "manifest.json", msgspec.to_builtins(snap))
                os.replace(work, final)  # listed and bootable only from here on
                fsync_path(self.snapshots_dir)
                self._snapshots[snapshot_id] = snap
                return snap.info()
            except BaseException as exc:
                # The disk may have been switched to new_top before the failure: believe QEMU,
                # or a later garbage collection would delete the layer the VM writes to.
                if str(new_top) not in rec.chain and machine.alive():
                    rec.chain = await _live_chain(machine, rec.chain)
                    rec.launch = msgspec.structs.replace(rec.launch, disk=rec.chain[0])
                    self._write_instance(rec)
                if isinstance(exc, TimeoutError):
                    raise BackendTimeout(f"save of {instance_id} timed out") from None
                raise
            finally:
                self._pending_disks.discard(str(new_top))
                shutil.rmtree(work, ignore_errors=True)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        out = [s.info() for s in self._snapshots.values()]
        if self._boot is not None:
            out.insert(0, self._boot.info())
        return out

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return self._snapshot(snapshot_id).info()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        rec = self._snapshot(snapshot_id)
        if rec.boot:
            raise InvalidState("boot snapshots belong to their image", state="boot")
        del self._snapshots[snapshot_id]
        shutil.rmtree(rec.dir, ignore_errors=True)
        fsync_path(self.snapshots_dir)
        self._gc_disks()  # layers that dependants still use stay

    # instances ------------------------------------------------------------------------------

    async def boot(self, snapshot_id: str, instance_id: str) -> InstanceInfo:
        check_id("instance", instance_id)
        snap = self._snapshot(snapshot_id)
        async with self._lock(instance_id):
            if instance_id in self._instances or (self.instances_dir / instance_id).exists():
                raise BackendError(f"instance {instance_id!r} already exists", id=instance_id)
            d = self.instances_dir / instance_id
            d.mkdir(parents=True)
            top = self.disks / f"{uuid.uuid4().hex}.qcow2"
            self._pending_disks.add(str(top))
            try:
                await self._create_overlay(top, snap.chain[0])
                ls = self._launch_spec(
                    instance_id, d, snap.accel, snap.kernel, snap.initrd, str(top), snap.machine
                )
                ls = msgspec.structs.replace(ls, spec=snap.spec)
                now = time.time()
                rec = InstanceRecord(
                    id=instance_id,
                    snapshot_id=snapshot_id,
                    parent_snapshot_id=snapshot_id,
                    image_id=snap.image_id,
                    state=InstanceState.RUNNING,
                    launch=ls,
                    chain=[str(top), *snap.chain],
                    created_at=now,
                )
                await self._restore(rec, snap.state_file)
                self._instances[instance_id] = rec
                self._write_instance(rec)  # the instance exists from here on
                return rec.info(self._key_path)
            except BaseException:
                machine = self._machines.pop(instance_id, None)
                if machine is not None:
                    await machine.shutdown(graceful=False)
                shutil.rmtree(d, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    top.unlink()
                raise
            finally:
                self._pending_disks.discard(str(top))

    async def _restore(self, rec: InstanceRecord, state_file: str) -> None:
        """Start QEMU on `rec.launch` from a state file; ready = sshd banner + guest synced."""
        try:
            async with asyncio.timeout(self.config.restore_timeout):
                machine = await self._launch(rec, Path(state_file))
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

    async def _launch(self, rec: InstanceRecord, state_file: Path | None) -> Machine:
        """Launch with the recorded ports; new ones only if another process took them."""
        for attempt in range(3):
            machine = Machine(self.config.qemu_binary, rec.launch)
            try:
                await machine.launch(state_file=state_file)
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
            raise BackendError("duplicate instance ids", ids=list(instance_ids))
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
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state is not InstanceState.RUNNING:
                raise InvalidState("only a running instance can be paused", state=rec.state)
            await self._live_machine(rec).qmp("stop")
            rec.state = InstanceState.PAUSED
            self._write_instance(rec)
            return rec.info(self._key_path)

    async def resume(self, instance_id: str) -> InstanceInfo:
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
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
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
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

    async def stop(self, instance_id: str) -> InstanceInfo:
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            if rec.state in _LIVE:
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
            self._write_instance(rec)
            return rec.info(self._key_path)

    async def delete(self, instance_id: str) -> None:
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            machine = self._machines.pop(instance_id, None)
            try:
                if machine is not None:
                    await machine.shutdown(graceful=False)
                elif rec.pid is not None:
                    qmp_path = str(socket_dir(self._dir(rec)) / "qmp.sock")
                    if pid_alive(rec.pid, qmp_path):
                        await _kill_strays(qmp_path)
            finally:
                del self._instances[instance_id]
                shutil.rmtree(self._dir(rec), ignore_errors=True)
                self._gc_disks()
        self._locks.pop(instance_id, None)

    async def standby(self, instance_id: str) -> InstanceInfo:
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
            machine = self._live_machine(rec)
            final = self._standby_file(rec)
            tmp = final.with_name(final.name + ".tmp")
            try:
                async with asyncio.timeout(self.config.restore_timeout):
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
            self._write_instance(rec)
            return rec.info(self._key_path)

    async def wake(self, instance_id: str) -> InstanceInfo:
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
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

    async def expose_port(self, instance_id: str, guest_port: int) -> int:
        if not 0 < guest_port < 65536:
            raise BackendError("guest port out of range", guest_port=guest_port)
        async with self._lock(instance_id):
            rec = self._instance(instance_id)
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

    async def stats(self, instance_id: str) -> InstanceStats:
        rec = self._instance(instance_id)
        if rec.state not in _LIVE or rec.pid is None:
            return InstanceStats(rss_mb=0.0, cpu_seconds=0.0, uptime_seconds=0.0)
        try:
            rss_kb, cpu = _proc_usage(rec.pid)
        except (FileNotFoundError, StopIteration, IndexError) as exc:
            raise InvalidState("the VM process is gone", state="stopped") from exc
        return InstanceStats(
            rss_mb=round(rss_kb / 1024, 1),
            cpu_seconds=cpu,
            uptime_seconds=max(0.0, time.time() - rec.started_at),
        )

    # helpers --------------------------------------------------------------------------------

    @property
    def _key_path(self) -> str:
        return str(images.ssh_key_path(self.config))

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _instance(self, instance_id: str) -> InstanceRecord:
        rec = self._instances.get(instance_id)
        if rec is None:
            raise NotFound(f"no instance {instance_id!r}", instance_id=instance_id)
        return rec

    def _live_machine(self, rec: InstanceRecord) -> Machine:
        machine = self._machines.get(rec.id)
        if rec.state not in _LIVE or machine is None:
            raise InvalidState(f"instance {rec.id} is not running", state=rec.state)
        if not machine.alive():
            rec.state, rec.pid = InstanceState.STOPPED, None
            self._machines.pop(rec.id, None)
            self._write_instance(rec)
            raise InvalidState(f"the VM of {rec.id} has exited", state=rec.state)
        return machine

    def _dir(self, rec: InstanceRecord) -> Path:
        return self.instances_dir / rec.id

    def _standby_file(self, rec: InstanceRecord) -> Path:
        return self._dir(rec) / "standby.state"

    def _write_instance(self, rec: InstanceRecord) -> None:
        if (self._dir(rec)).exists():
            write_json_atomic(self._dir(rec) / "manifest.json", msgspec.to_builtins(rec))

    async def _create_overlay(self, path: Path, backing: str) -> None:
        await run(
            [
                self.config.qemu_img, "create", "-q", "-f", "qcow2",
                "-b", backing, "-F", "qcow2", str(path),
            ],
            timeout=30,
        )  # fmt: skip

    def _gc_disks(self) -> None:
        """Delete pool layers no record references (reference counting by reachability)."""
        used = set(self._pending_disks)
        for inst in self._instances.values():
            used.update(inst.chain)
        for snap in self._snapshots.values():
            used.update(snap.chain)
        for f in self.disks.glob("*.qcow2"):
            if str(f) not in used:
                f.unlink(missing_ok=True)


async def _live_chain(machine: Machine, fallback: list[str]) -> list[str]:
    """The disk chain QEMU really uses (a save may have ended before its record was written)."""
    try:
        blocks = await machine.qmp("query-block")
        for block in blocks:
            if block.get("device") == "d0":
                chain: list[str] = []
                img = block["inserted"]["image"]
                while img is not None:
                    chain.append(img["filename"])
                    img = img.get("backing-image")
                return chain
    except (BackendError, KeyError, TypeError):
        pass
    return fallback


async def _kill_strays(marker: str) -> None:
    """Kill QEMU processes whose command line names `marker` (a boot cut short by a crash)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name), marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), 9)


def _proc_usage(pid: int) -> tuple[int, float]:
    """RSS in kB and CPU seconds (user + system) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss_kb, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fsync_all(paths: list[Path]) -> None:
    for p in paths:
        fsync_path(p)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


__all__ = ["QemuBackend", "QemuConfig"]
