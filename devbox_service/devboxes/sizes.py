"""Machine sizes a caller may ask for, and the one rule for turning a request into a spec."""

from __future__ import annotations

import msgspec

from devbox_service.backends.base import MachineSpec
from devbox_service.errors import InvalidSpec

MIN_MEMORY_MB = 128  # the guest kernel and sshd need about this much to boot


class SizeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The largest devbox one request may ask for (the host's memory check comes after)."""

    max_vcpus: int = 8
    max_memory_mb: int = 16384
    max_disk_mb: int = 1024 * 1024


def require_growth(current_mb: int, asked_mb: int) -> None:
    """Disks only grow. Raises InvalidSpec naming `disk_size`."""
    if asked_mb < current_mb:
        raise InvalidSpec(
            f"disk_size must be at least {current_mb} (the disk's size now): disks only grow",
            loc=["body", "disk_size"],
        )


def requested_spec(
    base: MachineSpec,
    limits: SizeLimits,
    *,
    vcpus: int | None,
    memory: int | None,
    disk_size: int | None,
) -> MachineSpec:
    """`base` with the fields asked for. Raises InvalidSpec naming the field out of bounds.

    A disk never gets smaller than `base` (it holds the image): a smaller `disk_size` is
    raised to it rather than refused, which is what SDK defaults (700 MB) expect."""
    for field, asked, low, high in (
        ("vcpus", vcpus, 1, limits.max_vcpus),
        ("memory", memory, MIN_MEMORY_MB, limits.max_memory_mb),
        ("disk_size", disk_size, 1, limits.max_disk_mb),
    ):
        if asked is not None and not low <= asked <= high:
            raise InvalidSpec(
                f"{field} must be from {low} to {high} on this host", loc=["body", field]
            )
    return MachineSpec(
        vcpus=base.vcpus if vcpus is None else vcpus,
        memory_mb=base.memory_mb if memory is None else memory,
        disk_mb=max(base.disk_mb, disk_size or 0),
    )
