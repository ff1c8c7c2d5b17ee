"""Configuration of the embedded QEMU backend (one frozen Struct, no web imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from devbox_service.backends.base import MachineSpec

MachineType = Literal["microvm", "pc"]
Accel = Literal["auto", "kvm", "tcg"]


class QemuConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the backend keeps its files and how it runs guests.

    `state_dir` holds instances and user snapshots (owned by the service's records);
    `cache_dir` holds what can be rebuilt: the image, its boot snapshots and the SSH key the
    image trusts. Keep the cache outside the repository; it is shared by every state dir.
    """

    state_dir: str
    cache_dir: str
    machine: MachineType = "microvm"
    accel: Accel = "auto"
    spec: MachineSpec = msgspec.field(default_factory=MachineSpec)
    qemu_binary: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    qemu_user: str = "auto"
    """The user QEMU runs as when the service is root ("auto": devbox-qemu, else nobody; "":
    stay root). A service that is not root runs QEMU as itself. See `confine`."""
    debian_mirror: str = "http://deb.debian.org/debian"
    suite: str = "bookworm"
    kernel_version: str | None = None  # None: the newest /boot/vmlinuz-*-cloud-amd64
    boot_timeout: float = 180.0  # cold boot to SSH under TCG (image build, reboot)
    restore_timeout: float = 60.0  # restore to SSH ready
    build_timeout: float = 1800.0  # debootstrap and friends
    warm_pool: int = 0  # QEMU processes kept waiting for the default boot snapshot's state
    isolated: bool = True  # guests reach nothing on the host or beyond but `guest_services`
    guest_services: dict[int, str] = msgspec.field(default_factory=dict)
    """Port on the guests' service address (10.0.2.100) -> the host Unix socket it reaches."""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir)
