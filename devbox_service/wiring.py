"""How the service's parts are built from the settings: the VM backend, the guests' sockets,
the limits, the SSH gateway's addresses, and the devbox core for offline commands. With
`services.Services` (which starts and stops them), the one place things are wired."""

from __future__ import annotations

from pathlib import Path

from devbox_service.backends.base import GUEST_API_PORT, GUEST_PROXY_PORT, VMBackend
from devbox_service.db import Database
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.quotas import Admission, Limits, LimitStore
from devbox_service.devboxes.snapshot_store import SnapshotStore
from devbox_service.devboxes.store import DevboxStore
from devbox_service.secrets.box import SecretBox
from devbox_service.settings import Settings
from devbox_service.sockets import guest_socket_dir, short_socket_path


def build_backend(settings: Settings) -> VMBackend | None:
    if settings.vm_backend == "none":
        return None
    from devbox_service.backends.base import MachineSpec
    from devbox_service.backends.qemu.config import QemuConfig
    from devbox_service.backends.qemu.driver import QemuBackend

    config = QemuConfig(
        state_dir=str(Path(settings.data_dir) / "vms"),
        guest_services={
            GUEST_API_PORT: str(guest_api_socket(settings)),
            GUEST_PROXY_PORT: str(guest_proxy_socket(settings)),
        },
        cache_dir=settings.cache_dir,
        machine=settings.vm_machine,
        accel=settings.vm_accel,
        spec=MachineSpec(
            vcpus=settings.vm_vcpus, memory_mb=settings.vm_memory_mb, disk_mb=settings.vm_disk_mb
        ),
        warm_pool=settings.vm_warm_pool,
    )
    return QemuBackend(config)


def qemu_group(settings: Settings) -> int | None:
    """The group of the user QEMU runs as, when that is not the service's own (a root
    service confines QEMU to an unprivileged user): the guest sockets are shared with it."""
    if settings.vm_backend == "none":
        return None
    from devbox_service.backends.qemu.confine import qemu_user, user_group

    return user_group(qemu_user(quiet=True))


def guest_api_socket(settings: Settings) -> Path:
    """Where guests' API connections arrive (stable per data dir: VMs outlive the service)."""
    directory = guest_socket_dir(Path(settings.data_dir), qemu_group(settings))
    return short_socket_path(directory / "guest-api.sock")


def guest_proxy_socket(settings: Settings) -> Path:
    directory = guest_socket_dir(Path(settings.data_dir), qemu_group(settings))
    return short_socket_path(directory / "guest-proxy.sock")


def admission(
    settings: Settings, devboxes: DevboxStore, snapshots: SnapshotStore, database: Database
) -> Admission:
    """The limits from the settings, overridable per user and org (`devbox-service limits`)."""
    return Admission(
        devboxes,
        snapshots,
        LimitStore(database),
        user_defaults=Limits(
            devboxes=settings.limit_devboxes_per_user,
            snapshots=settings.limit_snapshots_per_user,
            disk_mb=settings.limit_disk_mb_per_user,
        ),
        org_defaults=Limits(
            devboxes=settings.limit_devboxes_per_org,
            snapshots=settings.limit_snapshots_per_org,
            disk_mb=settings.limit_disk_mb_per_org,
        ),
        memory_reserve_mb=settings.host_memory_reserve_mb,
        vm_overhead_mb=settings.vm_memory_overhead_mb,
    )


def offline_core(settings: Settings, database: Database, backend: VMBackend) -> DevboxCore:
    """The devbox core over a data dir no service holds (the operator's offline commands)."""
    devboxes, snapshots = DevboxStore(database), SnapshotStore(database)
    return DevboxCore(
        devboxes,
        snapshots,
        backend,
        SecretBox.open(Path(settings.data_dir)),
        admission(settings, devboxes, snapshots, database),
    )


def offline_admission(settings: Settings, database: Database) -> Admission:
    """The limits in force, for `devbox-service limits` (no service needed)."""
    return admission(settings, DevboxStore(database), SnapshotStore(database), database)


def gateway_hosts(http_host: str) -> tuple[str, ...]:
    """The SSH gateway listens where the API does; loopback means both IPv4 and IPv6, since
    `{devbox_id}.localhost` resolves to ::1 first on many systems."""
    if http_host in ("127.0.0.1", "localhost", "::1"):
        return ("127.0.0.1", "::1")
    if http_host in ("0.0.0.0", "::"):
        return ("0.0.0.0", "::")
    return (http_host,)
