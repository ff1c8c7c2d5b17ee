"""Images and snapshots: the default image with its boot snapshots, and users' checkpoints.

An image is only its boot snapshot here (one per machine size, sharing the image's layers);
a checkpoint freezes an instance's disk chain and moves the instance onto a new top layer, so
`disk_layers` shows what the driver's reference counting would keep.
"""

from __future__ import annotations

import hashlib
import time

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    ImageInfo,
    InvalidState,
    MachineSpec,
    NotFound,
    ProgressCallback,
    SnapshotInfo,
    check_id,
)
from devbox_service.backends.memory.hooks import Hooks
from devbox_service.backends.memory.records import SnapshotRecord, snapshot_size

_RECIPE = hashlib.sha256(b"devbox memory backend").hexdigest()


class Snapshots(Hooks):
    """The image and snapshot half of `VMBackend`."""

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
            self._boot = SnapshotRecord(
                id=boot_id,
                image_id=image_id,
                parent_snapshot_id=None,
                spec=self.spec,
                chain=(self._new_layer(), self._new_layer()),  # boot layer on the image disk
                size_bytes=snapshot_size(self.spec),
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
            self._sized_boots[spec] = SnapshotRecord(
                id=sid,
                image_id=image_id,
                parent_snapshot_id=None,
                spec=spec,
                chain=(self._new_layer(), *self._boot.chain[1:]),
                size_bytes=snapshot_size(spec),
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
            snap = SnapshotRecord(
                id=snapshot_id,
                image_id=rec.image_id,
                parent_snapshot_id=rec.parent_snapshot_id,
                spec=rec.spec,
                chain=tuple(rec.chain),
                size_bytes=snapshot_size(rec.spec),
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
