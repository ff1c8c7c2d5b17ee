"""The guest image: a debootstrap'ed Debian root on ext4 in qcow2, with a busybox init.

Built once per recipe and cached under `cache_dir/images/<recipe-hash>/`. The recipe hash covers
everything that shapes the image (packages, guest scripts, kernel version, busybox binary, the
service's SSH public key, disk size), so a changed recipe builds a new directory and never
mutates an old one that snapshots may still be backed by. Builds happen in a `.tmp` directory
renamed into place when complete; an interrupted build leaves nothing that looks usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import asyncssh
import msgspec

from devbox_service.backends.base import BackendError, BackendTimeout, ProgressCallback
from devbox_service.backends.qemu import guest_files
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.util import fsync_path, run, write_json_atomic

RECIPE_VERSION = 1
BUSYBOX = "/bin/busybox"


class ImageFiles(msgspec.Struct, frozen=True, kw_only=True):
    """A complete, cached image: what a QEMU command line needs to boot it."""

    id: str
    recipe_hash: str
    dir: str
    kernel: str
    initrd: str
    disk: str
    kernel_version: str
    created_at: float
    build_seconds: float


def kernel_version(config: QemuConfig) -> str:
    if config.kernel_version:
        return config.kernel_version
    found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not found:
        raise BackendError("no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64")
    return Path(found[-1]).name.removeprefix("vmlinuz-")


def ssh_key_path(config: QemuConfig) -> Path:
    return config.cache_path / "ssh" / "id_ed25519"


def ensure_ssh_key(config: QemuConfig) -> tuple[Path, str]:
    """The installation's key for the service's own guest access, made once, mode 0600.

    It lives beside the image cache and its public half is part of the recipe hash, so a cached
    image always trusts exactly the key that sits next to it.
    """
    path = ssh_key_path(config)
    pub = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="devbox-service")
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        pub.write_bytes(key.export_public_key("openssh"))
        try:
            os.link(tmp, path)  # first writer wins if two processes race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        pub.write_bytes(asyncssh.read_private_key(str(path)).export_public_key("openssh"))
    os.chmod(path, 0o600)
    return path, pub.read_text().strip()


def recipe(config: QemuConfig, public_key: str) -> dict[str, object]:
    kver = kernel_version(config)
    with open(BUSYBOX, "rb") as f:
        busybox_sha = hashlib.sha256(f.read()).hexdigest()
    return {
        "version": RECIPE_VERSION,
        "suite": config.suite,
        "packages": list(guest_files.PACKAGES),
        "modules": list(guest_files.MODULES),
        "files": {
            "sysinit": guest_files.SYSINIT,
            "shutdown": guest_files.SHUTDOWN,
            "inittab": guest_files.INITTAB,
            "sshd": guest_files.SSHD_CONFIG,
            "proxy_profile": guest_files.PROXY_PROFILE,
            "apt_proxy": guest_files.APT_PROXY,
            "agent": guest_files.AGENT,
            "initramfs": guest_files.INITRAMFS_INIT,
        },
        "kernel": kver,
        "busybox": busybox_sha,
        "public_key": public_key,
        "disk_mb": config.spec.disk_mb,
    }


def recipe_hash(config: QemuConfig, public_key: str) -> str:
    blob = json.dumps(recipe(config, public_key), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_dir(config: QemuConfig, rhash: str) -> Path:
    return config.cache_path / "images" / rhash


def load_image(config: QemuConfig) -> ImageFiles | None:
    """The cached image for the current recipe, or None if it was never completely built."""
    _, pub = ensure_ssh_key(config)
    manifest = image_dir(config, recipe_hash(config, pub)) / "image.json"
    if not manifest.exists():
        return None
    return msgspec.json.decode(manifest.read_bytes(), type=ImageFiles)


@contextlib.asynccontextmanager
async def file_lock(path: Path, timeout: float):  # type: ignore[no-untyped-def]
    """An flock held across awaits, polled so that waiting never blocks the event loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.5)
        except TimeoutError:
            raise BackendTimeout(f"lock {path} still held after {timeout:.0f} s") from None
        yield
    finally:
        os.close(fd)


async def ensure_image(config: QemuConfig, progress: ProgressCallback | None = None) -> ImageFiles:
    """Return the cached image, building it first if needed (serialised by a file lock)."""
    say = progress or (lambda _line: None)
    _, pub = ensure_ssh_key(config)
    rhash = recipe_hash(config, pub)
    async with file_lock(config.cache_path / "images" / ".lock", config.build_timeout):
        found = load_image(config)
        if found is not None:
            return found
        return await _build(config, rhash, pub, say)


async def _build(
    config: QemuConfig, rhash: str, public_key: str, say: ProgressCallback
) -> ImageFiles:
    final = image_dir(config, rhash)
    work = final.with_name(rhash + ".tmp")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.time()
    kver = kernel_version(config)
    rootfs = work / "rootfs"
    debs = config.cache_path / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        async with asyncio.timeout(config.build_timeout):
            say(f"image {rhash}: debootstrap {config.suite} (minbase) ...")
            await run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(guest_files.PACKAGES),
                    f"--cache-dir={debs}",
                    config.suite,
                    str(rootfs),
                    config.debian_mirror,
                ],
                timeout=config.build_timeout,
            )
            say(f"image {rhash}: configuring guest (busybox init, sshd, agent, key)")
            _configure_rootfs(rootfs, public_key)
            say(f"image {rhash}: building initramfs for kernel {kver}")
            await _build_initramfs(work, kver)
            shutil.copyfile(f"/boot/vmlinuz-{kver}", work / "vmlinuz")
            say(f"image {rhash}: mkfs.ext4 ({config.spec.disk_mb} MB)")
            raw = work / "root.raw"
            await run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-L",
                    "devbox-root",
                    "-m",
                    "0",
                    "-E",
                    "lazy_itable_init=0,lazy_journal_init=0",
                    "-d",
                    str(rootfs),
                    str(raw),
                    f"{config.spec.disk_mb}M",
                ],
                timeout=600,
            )
            say(f"image {rhash}: converting to qcow2")
            await run(
                [config.qemu_img, "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")],
                timeout=600,
            )
            raw.unlink()
            shutil.rmtree(rootfs)
            os.chmod(work / "base.qcow2", 0o444)
            for name in ("base.qcow2", "initramfs.cpio", "vmlinuz"):
                fsync_path(work / name)
            info = ImageFiles(
                id=f"debian-{config.suite}-{rhash[:12]}",
                recipe_hash=rhash,
                dir=str(final),
                kernel=str(final / "vmlinuz"),
                initrd=str(final / "initramfs.cpio"),
                disk=str(final / "base.qcow2"),
                kernel_version=kver,
                created_at=time.time(),
                build_seconds=round(time.time() - started, 1),
            )
            write_json_atomic(work / "image.json", msgspec.to_builtins(info))
            os.replace(work, final)  # the image exists only once complete
            fsync_path(final.parent)
            say(f"image {rhash}: ready in {info.build_seconds:.0f} s")
            return info
    except TimeoutError:
        raise BackendTimeout(f"image build exceeded {config.build_timeout:.0f} s") from None
    finally:
        if work.exists():
            await asyncio.to_thread(shutil.rmtree, work, True)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _configure_rootfs(root: Path, public_key: str) -> None:
    shutil.copyfile(BUSYBOX, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    init = root / "sbin" / "init"
    if init.exists() or init.is_symlink():
        init.unlink()
    init.symlink_to("/bin/busybox")
    _write(root / "etc" / "inittab", guest_files.INITTAB)
    _write(root / "etc" / "devbox" / "sysinit", guest_files.SYSINIT, 0o755)
    _write(root / "etc" / "devbox" / "shutdown", guest_files.SHUTDOWN, 0o755)
    _write(root / "etc" / "devbox" / "agent", guest_files.AGENT, 0o755)
    _write(root / "etc" / "ssh" / "sshd_config.d" / "devbox.conf", guest_files.SSHD_CONFIG)
    _write(root / "etc" / "profile.d" / "devbox-proxy.sh", guest_files.PROXY_PROFILE)
    _write(root / "etc" / "apt" / "apt.conf.d" / "80devbox-proxy", guest_files.APT_PROXY)
    _write(root / "etc" / "hostname", "devbox\n")
    _write(root / "etc" / "hosts", "127.0.0.1 localhost\n127.0.1.1 devbox\n")
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    _write(resolv, "nameserver 10.0.2.3\n")
    _write(root / "etc" / "fstab", "# root is mounted by the initramfs\n")
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(ssh_dir / "authorized_keys", public_key + "\n", 0o600)
    # Shrink: package caches and docs are not needed to run (apt-get update refills lists).
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*_Packages",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "var/log/*.log",
    ):
        for p in glob.glob(str(root / pattern)):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)


async def _build_initramfs(work: Path, kver: str) -> None:
    tree = work / "initramfs"
    (tree / "bin").mkdir(parents=True)
    (tree / "modules").mkdir()
    shutil.copyfile(BUSYBOX, tree / "bin" / "busybox")
    os.chmod(tree / "bin" / "busybox", 0o755)
    _write(tree / "init", guest_files.INITRAMFS_INIT, 0o755)
    moddir = Path("/lib/modules") / kver / "kernel"
    for name in guest_files.MODULES:
        found = list(moddir.rglob(f"{name}.ko"))
        if not found:
            raise BackendError(f"kernel module {name} not found under {moddir}")
        shutil.copyfile(found[0], tree / "modules" / f"{name}.ko")
    _write(tree / "modules.order", "\n".join(guest_files.MODULES) + "\n")
    # Uncompressed: a few MB the kernel need not inflate under emulation.
    await run(
        [
            "sh",
            "-c",
            "find . -print0 | cpio --null -o -H newc --quiet > ../initramfs.cpio",
        ],
        cwd=str(tree),
        timeout=120,
    )
    shutil.rmtree(tree)
