"""The VM primitives every backend provides: images, snapshots, instances, branches, standby.

Domain services talk to VMs only through `VMBackend`, so a remote backend can replace the
embedded QEMU driver without touching them. Nothing here imports the web layer.

Exception tree (each class also sits under the domain category in `errors` named after it,
so the service maps backend errors to HTTP with the same table as its own)::

    BackendError                 anything a backend operation failed at          (Failed)
     +-- NotFound                unknown image, snapshot or instance id          (NotFound)
     +-- AlreadyExists           an id that is already taken                     (Conflict)
     +-- InvalidState            the operation makes no sense in the instance's  (Conflict)
     |                           current state
     +-- SnapshotInUse           a snapshot others still depend on (only if the  (Conflict)
     |                           backend cannot keep dependants working on its own)
     +-- BackendTimeout          an operation missed its deadline                (Failed)
     +-- CommandFailed           a host command (qemu-img, debootstrap, ...) exited non-zero
     +-- QMPFailed               QEMU's monitor answered with an error
     +-- GuestUnreachable        the guest did not answer in time (carries the   (Unreachable)
                                 console tail)
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Sequence

import msgspec

from devbox_service import errors


class BackendError(errors.Failed):
    """Base for every backend failure; `details` says what failed, for logs."""


class NotFound(errors.NotFound, BackendError):
    pass


class AlreadyExists(errors.Conflict, BackendError):
    pass


class InvalidState(errors.Conflict, BackendError):
    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message, state=state)


class SnapshotInUse(errors.Conflict, BackendError):
    pass


class BackendTimeout(BackendError):
    pass


class CommandFailed(BackendError):
    def __init__(
        self, message: str, *, command: Sequence[str], exit_code: int, output: str
    ) -> None:
        super().__init__(message, command=list(command), exit_code=exit_code, output=output)
        self.command = list(command)
        self.exit_code = exit_code
        self.output = output


class QMPFailed(BackendError):
    def __init__(self, message: str, *, command: str, error: str) -> None:
        super().__init__(message, command=command, error=error)
        self.command = command
        self.error = error


class GuestUnreachable(errors.Unreachable, BackendError):
    def __init__(self, message: str, *, console_tail: str) -> None:
        super().__init__(message, console_tail=console_tail)
        self.console_tail = console_tail


_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_id(kind: str, value: str) -> str:
    """Ids become path components (QEMU's state dir), so only a safe alphabet is accepted;
    every backend applies the same rule, so an id one accepts works on all. Raises
    `BackendError`."""
    if not _ID_RE.fullmatch(value) or value.endswith(".tmp"):
        raise BackendError(f"invalid {kind} id {value!r}", id=value)
    return value


GUEST_SERVICE_ADDRESS = "10.0.2.100"
"""The one address a guest reaches beyond itself: the service's API on port 80
(`GUEST_API_PORT`) and an HTTP proxy to the internet on `GUEST_PROXY_PORT`."""
GUEST_API_PORT = 80
GUEST_PROXY_PORT = 3128
GUEST_MARKER_VARIABLE = "DEVBOXSVC_GUEST_MARKER"
"""Set in each VM process's environment (QEMU's, inherited by the `socat` its guestfwd starts
per connection): the egress servers read it from their peer's /proc environ to tell which
devbox a connection on the shared sockets comes from (see `VMBackend.instance_of_guest`)."""


class InstanceState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STANDBY = "standby"  # saved to disk, no VM process: costs no memory
    STOPPED = "stopped"


class MachineSpec(msgspec.Struct, frozen=True, kw_only=True):
    vcpus: int = 1
    memory_mb: int = 256
    disk_mb: int = 2048


class SSHEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """How the service itself reaches a guest's sshd (key auth, never exposed to users)."""

    host: str
    port: int
    username: str
    private_key_path: str


class PortForward(msgspec.Struct, frozen=True, kw_only=True):
    """Where a guest port is reached from the service: an address and a port of the host
    that runs the VM (loopback for the embedded backend; another host's address once VMs
    run elsewhere), never assumed to be this machine."""

    address: str
    port: int

    @property
    def authority(self) -> str:
        """`address:port` as a URL writes it (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    description: str
    boot_snapshot_id: str
    default: bool
    created_at: float


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    image_id: str
    parent_snapshot_id: str | None
    spec: MachineSpec
    size_bytes: int
    created_at: float


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    snapshot_id: str  # the snapshot it was booted from
    state: InstanceState
    spec: MachineSpec
    ssh: SSHEndpoint
    address: str  # the host address its exposed ports are reached at
    exposed_ports: dict[int, int]  # guest port -> port on `address`
    started_at: float


class RemovedFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    bytes: int
    why: str


class GarbageReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a garbage collection removed (and how much disk that freed)."""

    removed: list[RemovedFile] = []
    freed_bytes: int = 0


class InstanceStats(msgspec.Struct, frozen=True, kw_only=True):
    rss_mb: float
    cpu_seconds: float
    uptime_seconds: float


ProgressCallback = Callable[[str], None]


class VMBackend(abc.ABC):
    """Async VM primitives. Every method has a deadline and raises `BackendError` subclasses."""

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the backend: re-adopt VMs that outlived a restart of the service."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; running VMs keep running (they belong to their records)."""

    def instance_of_guest(self, marker: str) -> str | None:
        """The live instance whose VM process carries `marker` in `GUEST_MARKER_VARIABLE`."""
        return None

    async def collect_garbage(self) -> GarbageReport:
        """Remove files nothing references (left by crashes, deleted snapshots, old image
        builds); never one an instance, a snapshot or work under way uses."""
        return GarbageReport()

    @abc.abstractmethod
    async def reconcile(self, instance_ids: set[str], snapshot_ids: set[str]) -> list[str]:
        """Delete instances and snapshots no record owns; return the ids removed.

        Image boot snapshots are always kept.
        """

    # images
    @abc.abstractmethod
    async def ensure_image(self, progress: ProgressCallback | None = None) -> ImageInfo:
        """Build (once, cached by recipe) the default image and its boot snapshot."""

    @abc.abstractmethod
    async def list_images(self) -> list[ImageInfo]: ...

    @abc.abstractmethod
    async def image_snapshot(self, image_id: str, spec: MachineSpec) -> SnapshotInfo:
        """The image booted in `spec`, as a snapshot instances restore: made once per size
        (a cold boot, the disk grown to `spec.disk_mb`) and cached like the default one.
        The image must be ensured; `spec.disk_mb` is at least the image's own size."""

    # snapshots
    @abc.abstractmethod
    async def save(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        """Checkpoint memory and disk of a running or paused instance; it keeps its state."""

    @abc.abstractmethod
    async def list_snapshots(self) -> list[SnapshotInfo]: ...

    @abc.abstractmethod
    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo: ...

    @abc.abstractmethod
    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot's files; instances and snapshots built on it keep working."""

    # instances
    @abc.abstractmethod
    async def boot(self, snapshot_id: str, instance_id: str) -> InstanceInfo:
        """Restore a snapshot into a new running instance whose guest answers SSH."""

    @abc.abstractmethod
    async def branch(self, snapshot_id: str, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        """Boot several instances from one snapshot concurrently, in the order of the ids.
        All or nothing: if one boot fails the others are deleted and its error is raised."""

    @abc.abstractmethod
    async def get_instance(self, instance_id: str) -> InstanceInfo: ...

    @abc.abstractmethod
    async def list_instances(self) -> list[InstanceInfo]: ...

    @abc.abstractmethod
    async def pause(self, instance_id: str) -> InstanceInfo:
        """Running -> paused (the guest stands still); InvalidState in any other state."""

    @abc.abstractmethod
    async def resume(self, instance_id: str) -> InstanceInfo:
        """Paused -> running; InvalidState in any other state."""

    @abc.abstractmethod
    async def reboot(self, instance_id: str) -> InstanceInfo: ...

    @abc.abstractmethod
    async def stop(self, instance_id: str) -> InstanceInfo:
        """Any state -> stopped: nothing in memory (a standby image is dropped), the disk
        kept. Stopping a stopped instance changes nothing."""

    @abc.abstractmethod
    async def delete(self, instance_id: str) -> None:
        """End the VM process and remove every file of the instance."""

    @abc.abstractmethod
    async def standby(self, instance_id: str) -> InstanceInfo:
        """Save to disk and end the VM process; `wake` restores it. Running or paused ->
        standby; InvalidState otherwise."""

    @abc.abstractmethod
    async def wake(self, instance_id: str) -> InstanceInfo:
        """Standby (restored) or stopped (booted from its disk) -> running; InvalidState
        otherwise."""

    @abc.abstractmethod
    async def expose_port(self, instance_id: str, guest_port: int) -> int:
        """Forward a guest TCP port to a host loopback port; return the host port."""

    @abc.abstractmethod
    async def unexpose_port(self, instance_id: str, guest_port: int) -> None:
        """Remove a forward `expose_port` added (nothing if there is none; SSH stays)."""

    @abc.abstractmethod
    async def reboot_into(self, instance_id: str, spec: MachineSpec) -> InstanceInfo:
        """Power off and boot again from the disk with `spec`'s CPUs and memory, the disk
        grown to `spec.disk_mb` (never shrunk). Memory is not kept: a cold reboot."""

    @abc.abstractmethod
    async def grow_disk(self, instance_id: str, disk_mb: int) -> InstanceInfo:
        """Grow a running instance's disk and its root filesystem to `disk_mb`, online.
        A size at or below the current one changes nothing (disks never shrink)."""

    @abc.abstractmethod
    async def stats(self, instance_id: str) -> InstanceStats: ...

    async def memory_mb(self, instance_id: str) -> float:
        """What a live VM's process holds, pages shared with others counted in part (PSS).
        Raises InvalidState when there is no process."""
        return (await self.stats(instance_id)).rss_mb

    async def held_memory_mb(self) -> float:
        """Host memory the backend holds besides its instances (a warm pool's processes)."""
        return 0.0
