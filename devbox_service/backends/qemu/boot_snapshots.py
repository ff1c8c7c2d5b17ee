"""Images as the backend offers them: the accelerator choice and each image's boot snapshot.

Instances never cold-boot the image: each (image, machine, accelerator, size, launch) has a
boot snapshot, taken once after sshd came up and cached beside the image, that every instance
restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from devbox_service.backends.base import (
    BackendError,
    ImageInfo,
    MachineSpec,
    NotFound,
    ProgressCallback,
    SnapshotInfo,
)
from devbox_service.backends.qemu import image as images
from devbox_service.backends.qemu.argv import GuestRam, launch_key
from devbox_service.backends.qemu.backend_state import BackendState
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.guest_shell import (
    SETTLE_MEMORY,
    grow_root_filesystem,
    guest_shell,
    wait_ssh_banner,
)
from devbox_service.backends.qemu.machine import Machine
from devbox_service.backends.qemu.store import SnapshotRecord
from devbox_service.backends.qemu.util import (
    file_size,
    fsync_path,
    read_json,
    run,
    write_json_atomic,
)

log = logging.getLogger(__name__)


def boot_snapshot_key(
    config: QemuConfig, img: images.ImageFiles, accel: str, spec: MachineSpec | None = None
) -> tuple[str, Path]:
    """The boot snapshot's id and directory: a new key for anything a restore depends on.

    The disk size is in the key only when it differs from the image's own, so the default
    size keeps the key it always had (instances' disk chains name its files)."""
    spec = spec or config.spec
    key = f"{config.machine}-{accel}-{spec.vcpus}c-{spec.memory_mb}m-{launch_key()}"
    if spec.disk_mb != config.spec.disk_mb:
        key += f"-{spec.disk_mb}d"
    return f"boot-{img.recipe_hash[:12]}-{key}", Path(img.dir) / "boot" / key


class BootSnapshots(BackendState):
    """`ensure_image` and `list_images`, with the accelerator probe they depend on."""

    async def ensure_image(self, progress: ProgressCallback | None = None) -> ImageInfo:
        say = progress or (lambda _line: None)
        img = await images.ensure_image(self.config, say)
        accel = await self._resolve_accel(img, say)
        boot = await self._ensure_boot_snapshot(img, accel, say, self.config.spec)
        self._image, self._boot = img, boot
        return self._image_info(img, boot)

    async def image_snapshot(self, image_id: str, spec: MachineSpec) -> SnapshotInfo:
        img, accel = self._image, self._cached_accel()
        if img is None or accel is None or img.id != image_id:
            raise NotFound(f"no image {image_id!r}", image_id=image_id)
        if spec.disk_mb < self.config.spec.disk_mb:
            raise BackendError(
                f"a disk of {spec.disk_mb} MB is smaller than the image "
                f"({self.config.spec.disk_mb} MB)",
                disk_mb=spec.disk_mb,
            )
        if spec == self.config.spec and self._boot is not None:
            return self._boot.info()
        boot = await self._ensure_boot_snapshot(img, accel, log.info, spec)
        return boot.info()

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

    # accelerator ----------------------------------------------------------------------------

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
        try:
            async with self._cold_machine("kvm-probe", work, img, "kvm") as machine:
                await machine.launch(timeout=10)
                async with asyncio.timeout(20):
                    while b"devbox: sysinit done" not in _read(machine.console_path):
                        if not machine.alive():
                            return False
                        await asyncio.sleep(0.2)
                return True
        except (TimeoutError, BackendError):
            return False

    # boot snapshot --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _cold_machine(
        self,
        name: str,
        work: Path,
        img: images.ImageFiles,
        accel: str,
        spec: MachineSpec | None = None,
    ) -> AsyncIterator[Machine]:
        """A not yet launched machine on a fresh overlay of the image in `work`, its disk
        `spec.disk_mb` large (the filesystem is grown once the guest is up).

        Afterwards the process is killed and `work` removed, whatever happened.
        """
        spec = spec or self.config.spec
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        machine: Machine | None = None
        try:
            disk = work / "disk.qcow2"
            await self._create_overlay(disk, img.disk, size_mb=spec.disk_mb)
            ls = self._launch_spec(name, work, accel, img.kernel, img.initrd, str(disk))
            ls = msgspec.structs.replace(ls, spec=spec)
            machine = self._new_machine(ls)
            yield machine
        finally:
            if machine is not None:
                await machine.shutdown(graceful=False)
            shutil.rmtree(work, ignore_errors=True)

    def _load_boot(
        self, img: images.ImageFiles, accel: str, spec: MachineSpec | None = None
    ) -> SnapshotRecord | None:
        _, d = boot_snapshot_key(self.config, img, accel, spec)
        manifest = d / "manifest.json"
        if not manifest.exists():
            return None
        return msgspec.json.decode(manifest.read_bytes(), type=SnapshotRecord)

    async def _ensure_boot_snapshot(
        self, img: images.ImageFiles, accel: str, say: ProgressCallback, spec: MachineSpec
    ) -> SnapshotRecord:
        """Cold boot once, wait for sshd, save memory + disk: every instance restores this.

        Guest memory is written to a file (`ram`), settled first (caches dropped, free memory
        zeroed and stored as holes), and the state holds the devices only: a restore maps
        the file instead of loading memory, and all instances share its unwritten pages."""
        sid, final = boot_snapshot_key(self.config, img, accel, spec)
        async with images.file_lock(final.parent / ".lock", self.config.build_timeout):
            found = self._load_boot(img, accel, spec)
            if found is not None:
                return found
            work = final.with_name(final.name + ".tmp")
            async with self._cold_machine(sid, work, img, accel, spec) as machine:
                disk = Path(machine.launch_spec.disk)
                say(f"boot snapshot {sid}: cold boot ({accel}) ...")
                t0 = time.monotonic()
                ram = work / "ram"
                await machine.launch(ram=GuestRam(path=str(ram), shared=True), timeout=30)
                await wait_ssh_banner(
                    machine.launch_spec.ssh_port, self.config.boot_timeout, machine
                )
                await machine.agent("ping", timeout=30)
                if spec.disk_mb > self.config.spec.disk_mb:
                    await grow_root_filesystem(
                        machine.launch_spec.ssh_port, self._key_path, self.config.boot_timeout
                    )
                say(f"boot snapshot {sid}: sshd up after {time.monotonic() - t0:.1f} s; saving")
                port = machine.launch_spec.ssh_port
                await guest_shell(port, self._key_path, SETTLE_MEMORY, self.config.boot_timeout)
                await machine.qmp("stop")
                await machine.migrate_to(work / "state", timeout=120, memory_in_file=True)
                await machine.shutdown(graceful=True)
                await run(["fallocate", "--dig-holes", str(ram)], timeout=120)
                for f in (disk, ram):
                    os.chmod(f, 0o444)
                for f in (disk, ram, work / "state"):
                    fsync_path(f)
                for extra in ("qemu.log",):
                    with contextlib.suppress(FileNotFoundError):
                        (work / extra).unlink()
                rec = SnapshotRecord.of_launch(
                    machine.launch_spec,
                    id=sid,
                    image_id=img.id,
                    parent_snapshot_id=None,
                    chain=[str(final / "disk.qcow2"), img.disk],
                    dir=str(final),
                    size_bytes=sum(file_size(f) for f in (work / "state", disk, ram)),
                    boot=True,
                    memory_file=str(final / "ram"),
                )
                write_json_atomic(work / "manifest.json", msgspec.to_builtins(rec))
                os.replace(work, final)
                fsync_path(final.parent)
                say(f"boot snapshot {sid}: ready")
                return rec


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
