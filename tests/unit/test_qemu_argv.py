"""The QEMU command line, golden: a saved guest restores only into the argv it was saved with,
so any change here must be deliberate (and bump `LAUNCH_VERSION` if saved guests notice)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import msgspec
import pytest

from devbox_service.backends.base import MachineSpec
from devbox_service.backends.qemu.argv import (
    KERNEL_APPEND,
    GuestRam,
    LaunchSpec,
    command_line,
    launch_key,
    socket_dir,
)

DIR = "/var/lib/devbox/instances/vm-1"
APPEND = (
    "console=ttyS0 root=/dev/vda rw quiet loglevel=3 mitigations=off 8250.nr_uarts=1 "
    "random.trust_cpu=on norandmaps reboot=t tsc=reliable"
)
MICROVM = "x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,acpi=on"
# no guest services, no user switch: everything the filter can deny is denied
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def golden(machine: str, cpu: str, append: str, bus: str, net: str) -> list[str]:
    """The whole argv written out; only what machine type and accelerator change is filled in."""
    return [
        "qemu-system-x86_64",
        "-name", "vm-1",
        "-no-user-config", "-nodefaults",
        "-machine", machine,
        "-cpu", cpu,
        "-smp", "2",
        "-m", "512",
        "-kernel", "/cache/vmlinuz",
        "-initrd", "/cache/initramfs.cpio",
        "-append", append,
        "-drive", "file=/var/lib/devbox/disks/top.qcow2,if=none,id=d0,format=qcow2,"
        "file.auto-read-only=off,file.locking=off",
        "-device", f"virtio-blk-{bus},drive=d0",
        "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", net,
        "-device", f"virtio-rng-{bus}",
        "-chardev", f"socket,id=agent,path={DIR}/agent.sock,server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", "virtserialport,chardev=agent,name=devbox.agent",
        "-chardev", f"file,id=ser0,path={DIR}/console.log,append=on",
        "-serial", "chardev:ser0",
        "-display", "none",
        "-qmp", f"unix:{DIR}/qmp.sock,server=on,wait=off",
        "-sandbox", SANDBOX,
    ]  # fmt: skip


# (machine type, accelerator) -> golden(-machine, -cpu, -append, device bus, network device)
MMIO_NET = "virtio-net-device,netdev=n0"
PCI_NET = "virtio-net-pci,netdev=n0,romfile="
TSC = " tsc_early_khz=2400000"
GOLDEN = {
    ("microvm", "tcg"): golden(
        f"microvm,accel=tcg,{MICROVM}", "max", APPEND + TSC, "device", MMIO_NET
    ),
    ("microvm", "kvm"): golden(f"microvm,accel=kvm,{MICROVM}", "host", APPEND, "device", MMIO_NET),
    ("pc", "tcg"): golden("pc,accel=tcg", "max", APPEND, "pci", PCI_NET),
    ("pc", "kvm"): golden("pc,accel=kvm", "host", APPEND, "pci", PCI_NET),
}  # fmt: skip


def launch(machine: str = "microvm", accel: str = "tcg", **overrides: object) -> LaunchSpec:
    """The spec behind GOLDEN; the driver gives the TSC rate only to microvm under TCG."""
    ls = LaunchSpec(
        name="vm-1",
        dir=DIR,
        machine=machine,
        accel=accel,
        spec=MachineSpec(vcpus=2, memory_mb=512),
        kernel="/cache/vmlinuz",
        initrd="/cache/initramfs.cpio",
        disk="/var/lib/devbox/disks/top.qcow2",
        ssh_port=2222,
        tsc_khz=2400000 if (machine, accel) == ("microvm", "tcg") else 0,
    )
    return msgspec.structs.replace(ls, **overrides)


@pytest.mark.parametrize("incoming", [None, "fd:7"])
@pytest.mark.parametrize(("machine", "accel"), list(GOLDEN))
def test_command_line_is_the_golden_argv(machine: str, accel: str, incoming: str | None) -> None:
    # A restore starts paused (-S) and waits for the state on the given fd, as the last args.
    expected = GOLDEN[machine, accel] + (["-S", "-incoming", incoming] if incoming else [])
    assert command_line("qemu-system-x86_64", launch(machine, accel), incoming) == expected


def test_forwards_follow_ssh_in_guest_port_order() -> None:
    argv = command_line("qemu", launch(forwards={8080: 40002, 3000: 40001}))
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22"
        ",hostfwd=tcp:127.0.0.1:40001-:3000,hostfwd=tcp:127.0.0.1:40002-:8080"
    )


def test_kernel_line_and_launch_key_are_what_boot_snapshots_were_saved_with() -> None:
    # Changing either silently orphans every cached boot snapshot: bump LAUNCH_VERSION instead.
    assert KERNEL_APPEND == APPEND
    assert launch_key() == "4444807d"


def test_a_memory_template_is_written_shared_and_cloned_private_with_a_deferred_restore() -> None:
    made = command_line("qemu", launch(), ram=GuestRam(path="/c/boot/ram", shared=True))
    assert made[made.index("-machine") + 1].endswith(",memory-backend=microvm.ram")
    assert made[-2:] == [
        "-object",
        "memory-backend-file,id=microvm.ram,size=512M,mem-path=/c/boot/ram,share=on",
    ]
    clone = command_line("qemu", launch(), "fd:7", ram=GuestRam(path="/c/boot/ram"))
    assert "memory-backend-file,id=microvm.ram,size=512M,mem-path=/c/boot/ram,share=off" in clone
    # x-ignore-shared is set over QMP before the state is read, so QEMU must wait for it
    assert clone[-3:] == ["-S", "-incoming", "defer"]
    plain = command_line("qemu", launch(), "fd:7")
    assert plain[-3:] == ["-S", "-incoming", "fd:7"] and "-object" not in plain


def test_an_isolated_guest_reaches_only_its_forwarded_service_addresses() -> None:
    services = {80: "/run/devbox/api.sock", 3128: "/run/devbox/egress.sock"}
    argv = command_line("qemu", launch(isolated=True, guest_services=services))
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,restrict=on"
        ",guestfwd=tcp:10.0.2.100:80-cmd:socat STDIO UNIX-CONNECT:/run/devbox/api.sock"
        ",guestfwd=tcp:10.0.2.100:3128-cmd:socat STDIO UNIX-CONNECT:/run/devbox/egress.sock"
    )


def test_short_instance_dir_holds_its_own_sockets() -> None:
    assert socket_dir(Path(DIR)) == Path(DIR)


def test_long_instance_dir_gets_a_stable_short_socket_dir() -> None:
    deep = Path("/tmp") / ("x" * 120) / "instances" / "vm-1"
    sockets = socket_dir(deep)
    digest = hashlib.sha256(str(deep).encode()).hexdigest()[:20]
    assert sockets == Path(tempfile.gettempdir()) / f"devbox-vm-{os.getuid()}" / digest
    assert len(str(sockets / "agent.sock")) <= 100
    argv = command_line("qemu", launch(dir=str(deep)))
    assert f"unix:{sockets}/qmp.sock,server=on,wait=off" in argv
    assert f"file,id=ser0,path={deep}/console.log,append=on" in argv  # the console stays put


def test_qemu_is_sandboxed_and_a_root_service_drops_it_to_the_unprivileged_user() -> None:
    # -runas: QEMU opens its files, then becomes the user before the guest runs; QEMU 7.2 sets
    # the filter before that setgid/setuid, so only then are set*id calls allowed.
    argv = command_line("qemu", launch(), "fd:7", run_as="devbox-qemu")
    sandbox = argv[argv.index("-sandbox") + 1]
    assert sandbox == "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
    assert argv[argv.index("-runas") + 1] == "devbox-qemu"
    assert argv[-3:] == ["-S", "-incoming", "fd:7"]
    assert "-runas" not in command_line("qemu", launch())


def test_guest_services_need_spawn_for_the_socat_slirp_forks_per_connection() -> None:
    argv = command_line("qemu", launch(guest_services={80: "/run/devbox/api.sock"}))
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny"
    )


def test_the_qemu_user_is_devbox_qemu_or_nobody_for_a_root_service_and_none_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from devbox_service.backends.qemu import confine

    users = {"nobody"}

    def getpwnam(name: str) -> object:
        if name not in users:
            raise KeyError(name)
        return object()

    monkeypatch.setattr("pwd.getpwnam", getpwnam)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert confine.qemu_user() == "nobody"
    assert "devbox-qemu does not exist" in caplog.text
    users.add("devbox-qemu")
    assert confine.qemu_user() == "devbox-qemu"
    assert confine.qemu_user("") == ""
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert confine.qemu_user() == ""  # only root can switch; QEMU keeps the service's user
