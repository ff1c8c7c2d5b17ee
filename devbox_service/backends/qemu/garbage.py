"""Garbage collection of the backend's files: what no instance, snapshot or work under way
references. The image cache is shared by every data directory on the host, so each one
leaves a mark in the image builds it uses (`images/<recipe>/users/`), and a build another
live data directory uses is kept."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from devbox_service.backends.base import GarbageReport, RemovedFile
from devbox_service.backends.qemu import image as images
from devbox_service.backends.qemu.backend_state import BackendState

GRACE_SECONDS = 600.0
"""Unreferenced directories and temporary files younger than this may belong to work under
way (a boot, a save, a standby) and are left for a later pass."""


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _old(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > GRACE_SECONDS
    except FileNotFoundError:
        return False


class Garbage(BackendState):
    """`collect_garbage`, and the marks that keep shared image builds alive."""

    def _referenced(self) -> set[str]:
        used = set(self._pending_disks)
        for inst in self._instances.values():
            used.update(inst.chain)
            used.update((inst.launch.kernel, inst.launch.initrd))
        for snap in self._snapshots.values():
            used.update(snap.chain)
        return used

    def _image_builds_used(self) -> set[Path]:
        """The image build directories this data directory's chains reach into."""
        root = self.config.cache_path / "images"
        used = set()
        for path in self._referenced():
            parts = Path(path).parts
            if Path(path).is_relative_to(root) and len(parts) > len(root.parts):
                used.add(root / parts[len(root.parts)])
        if self._image is not None:
            used.add(Path(self._image.dir))
        return used

    def mark_image_use(self) -> None:
        """Leave this data directory's mark in every image build it uses."""
        mark = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        for build in self._image_builds_used():
            users = build / "users"
            users.mkdir(exist_ok=True)
            (users / mark).write_text(str(self.root))

    def _other_users(self, build: Path) -> list[str]:
        found = []
        for mark in (build / "users").glob("*"):
            with_path = mark.read_text().strip()
            if with_path != str(self.root) and Path(with_path).is_dir():
                found.append(with_path)
        return found

    async def collect_garbage(self) -> GarbageReport:
        removed: list[RemovedFile] = []

        def remove(path: Path, why: str) -> None:
            size = _size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(RemovedFile(path=str(path), bytes=size, why=why))

        used = self._referenced()
        for layer in self.disks.glob("*.qcow2"):
            if str(layer) not in used and _old(layer):
                remove(layer, "a disk layer no instance or snapshot uses")
        for entry in self.snapshots_dir.iterdir():
            if entry.name not in self._snapshots and _old(entry):
                remove(entry, "files of a deleted or unfinished snapshot")
        known = {str(self._dir(rec)) for rec in self._instances.values()}
        for entry in self.instances_dir.iterdir():
            if str(entry) not in known and _old(entry):
                remove(entry, "files of a deleted or unfinished instance")
        for rec in self._instances.values():
            for leftover in self._dir(rec).glob("*.tmp"):
                if _old(leftover):
                    remove(leftover, "an unfinished standby state")
        self.mark_image_use()
        current = images.load_image(self.config)
        keep = self._image_builds_used() | ({Path(current.dir)} if current else set())
        for build in (self.config.cache_path / "images").iterdir():
            unused = build not in keep and not self._other_users(build)
            if build.is_dir() and unused and _old(build):
                remove(build, "an image build of an older recipe that nothing uses")
        return GarbageReport(removed=removed, freed_bytes=sum(r.bytes for r in removed))
