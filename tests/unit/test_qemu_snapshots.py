"""What the QEMU backend's snapshot records and boot snapshot keys are made of."""

from __future__ import annotations

import time
from pathlib import Path

from devbox_service.backends.base import InstanceState, MachineSpec
from devbox_service.backends.qemu.argv import LaunchSpec
from devbox_service.backends.qemu.boot_snapshots import boot_snapshot_key
from devbox_service.backends.qemu.config import QemuConfig
from devbox_service.backends.qemu.image import ImageFiles
from devbox_service.backends.qemu.store import InstanceRecord, SnapshotRecord

LAUNCH = LaunchSpec(
    name="vm-1",
    dir="/state/instances/vm-1",
    machine="microvm",
    accel="tcg",
    spec=MachineSpec(vcpus=2, memory_mb=512, disk_mb=4096),
    kernel="/cache/images/r/vmlinuz",
    initrd="/cache/images/r/initramfs.cpio",
    disk="/state/disks/top.qcow2",
    ssh_port=2222,
    forwards={8000: 40000},
)

IMAGE = ImageFiles(
    id="debian-bookworm-0123456789ab",
    recipe_hash="0123456789abcdef",
    dir="/cache/images/0123456789abcdef",
    kernel="/cache/images/0123456789abcdef/vmlinuz",
    initrd="/cache/images/0123456789abcdef/initramfs.cpio",
    disk="/cache/images/0123456789abcdef/base.qcow2",
    kernel_version="6.1.0-57-cloud-amd64",
    created_at=0.0,
    build_seconds=0.0,
)


def test_boot_snapshot_key_names_everything_a_restore_depends_on() -> None:
    config = QemuConfig(
        state_dir="/state", cache_dir="/cache", spec=MachineSpec(vcpus=2, memory_mb=512)
    )
    sid, directory = boot_snapshot_key(config, IMAGE, "tcg")
    assert sid == "boot-0123456789ab-microvm-tcg-2c-512m-4444807d"
    assert directory == Path("/cache/images/0123456789abcdef/boot/microvm-tcg-2c-512m-4444807d")
    other, _ = boot_snapshot_key(config, IMAGE, "kvm")
    assert other == "boot-0123456789ab-microvm-kvm-2c-512m-4444807d"
    # another size has its own; the disk is named only when it is not the image's own
    bigger, _ = boot_snapshot_key(config, IMAGE, "tcg", MachineSpec(memory_mb=1024, disk_mb=4096))
    assert bigger == "boot-0123456789ab-microvm-tcg-1c-1024m-4444807d-4096d"


def test_snapshot_record_keeps_the_launch_it_restores_into() -> None:
    before = time.time()
    snap = SnapshotRecord.of_launch(
        LAUNCH,
        id="snap-1",
        image_id=IMAGE.id,
        parent_snapshot_id="boot-x",
        chain=["/state/disks/frozen.qcow2", IMAGE.disk],
        dir="/state/snapshots/snap-1",
        size_bytes=42,
    )
    assert (snap.spec, snap.machine, snap.accel, snap.kernel, snap.initrd) == (
        LAUNCH.spec, "microvm", "tcg", LAUNCH.kernel, LAUNCH.initrd,
    )  # fmt: skip
    assert snap.state_file == "/state/snapshots/snap-1/state"
    assert not snap.boot
    assert before <= snap.created_at <= time.time()
    info = snap.info()
    assert (info.id, info.parent_snapshot_id, info.size_bytes) == ("snap-1", "boot-x", 42)


def test_instance_info_shows_ssh_and_exposed_ports() -> None:
    rec = InstanceRecord(
        id="vm-1",
        snapshot_id="snap-1",
        parent_snapshot_id="snap-1",
        image_id=IMAGE.id,
        state=InstanceState.RUNNING,
        launch=LAUNCH,
        chain=[LAUNCH.disk],
        started_at=12.5,
    )
    info = rec.info("/cache/ssh/id_ed25519")
    assert (info.ssh.host, info.ssh.port, info.ssh.username) == ("127.0.0.1", 2222, "root")
    assert info.ssh.private_key_path == "/cache/ssh/id_ed25519"
    assert info.exposed_ports == {8000: 40000}
    assert (info.state, info.spec, info.started_at) == (InstanceState.RUNNING, LAUNCH.spec, 12.5)
