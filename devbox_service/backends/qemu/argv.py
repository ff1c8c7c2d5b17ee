"""The QEMU command line, as a pure function of a `LaunchSpec`.

Kept apart from the process that runs it so the exact argv can be checked without a VM: a
restored guest only loads into the devices, ids and kernel line it was saved with, so an
unintended change here breaks every saved snapshot.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import msgspec

from devbox_service.backends.base import MachineSpec
from devbox_service.backends.qemu.confine import sandbox
from devbox_service.backends.qemu.guest_files import SERVICE_ADDRESS

# Bump when the QEMU command line changes in a way saved guests depend on (devices, ids).
# 2: isolated guest network with forwarded service addresses
# 3: boot snapshots keep guest memory in a file (a template clones map instead of loading)
LAUNCH_VERSION = 3

# The guest kernel's command line. reboot=t: microvm has no reset register or keyboard
# controller, so a triple fault is the one reboot that reaches QEMU. tsc=reliable: under TCG
# the jiffies watchdog loses ticks when the host is busy and would demote the TSC, and a
# jiffies clock then falls seconds behind. A saved guest keeps the line it booted with, hence
# its hash is part of the boot snapshot key.
KERNEL_APPEND = (
    "console=ttyS0 root=/dev/vda rw quiet loglevel=3 mitigations=off 8250.nr_uarts=1 "
    "random.trust_cpu=on norandmaps reboot=t tsc=reliable"
)


class LaunchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the command line depends on. Restores need the same one (ports aside)."""

    name: str
    dir: str
    machine: str
    accel: str
    spec: MachineSpec
    kernel: str
    initrd: str
    disk: str
    ssh_port: int
    forwards: dict[int, int] = {}  # guest port -> host port, besides SSH
    tsc_khz: int = 0
    isolated: bool = False  # restrict=on: no route to the host or out, only explicit forwards
    guest_services: dict[int, str] = {}  # port on SERVICE_ADDRESS -> host Unix socket
    launched_in: str = ""  # the directory QEMU started in, if it moved since (a pooled one)

    @property
    def process_marker(self) -> str:
        """A string in this QEMU's command line (its QMP socket path at launch): tells our
        process from an unrelated one that got the same pid."""
        return str(socket_dir(Path(self.launched_in or self.dir)) / "qmp.sock")


class GuestRam(msgspec.Struct, frozen=True, kw_only=True):
    """Guest memory backed by a file instead of anonymous memory.

    `shared`: the guest writes into the file (making a memory template: a boot snapshot whose
    state file then holds the devices only). Otherwise the file is mapped privately: a clone
    starts on the template's pages, which every clone shares through the page cache until it
    writes one (then that page is its own). Both sides run with the migration capability
    `x-ignore-shared`, so the state carries no memory and a restore copies none.
    """

    path: str
    shared: bool = False


def ram_backend_id(machine: str) -> str:
    """The id QEMU gives a machine's default RAM: a file-backed RAM must use it, so a state
    saved by a clone restores into plain (anonymous) RAM like any other."""
    return f"{machine}.ram"


TOP_FILE_OPTIONS = "file.auto-read-only=off,file.locking=off"
"""How QEMU opens the top layer (the file under the qcow2), so that it never has to open it
again by path, which QEMU turned into another user cannot (`confine`):

- auto-read-only=off: -drive defaults to on, which opens the file read-only while nothing
  writes it (an incoming restore) and reopens it read-write by path when the guest runs.
- locking=off: a save freezes the top and QEMU reopens it read-only by path; failing that
  (harmlessly: nothing writes a backing layer) the layer would keep its write lock, and a
  clone of the snapshot could not open it. The backend decides who writes which layer (each
  instance its own top); QEMU's image locks were only a second guard against two writers.
"""


def launch_key() -> str:
    """A short hash of what saved guests depend on; boot snapshot keys include it."""
    return hashlib.sha256(f"{LAUNCH_VERSION} {KERNEL_APPEND}".encode()).hexdigest()[:8]


def socket_dir(instance_dir: Path) -> Path:
    """Where the QMP and agent sockets live: the instance directory if the path fits.

    Unix socket paths are limited to 107 bytes; deep state dirs (pytest tmp dirs, long ids)
    get a short per-instance directory under the temp dir instead, derived from the instance
    directory so a restarted service finds the same sockets.
    """
    if len(str(instance_dir / "agent.sock")) <= 100:
        return instance_dir
    digest = hashlib.sha256(str(instance_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"devbox-vm-{os.getuid()}" / digest


def command_line(
    binary: str,
    ls: LaunchSpec,
    incoming: str | None = None,
    ram: GuestRam | None = None,
    *,
    run_as: str = "",
) -> list[str]:
    """The argv that runs `ls`; with `incoming`, QEMU waits for that state and a `cont`;
    with `ram`, guest memory is that file (see `GuestRam`). Always sandboxed; with `run_as`,
    QEMU becomes that user once its files are open (`confine`)."""
    d = Path(ls.dir)
    sockets = socket_dir(d)
    append = KERNEL_APPEND
    if ls.machine == "microvm":
        machine = (
            f"microvm,accel={ls.accel},x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,acpi=on"
        )
        bus = "device"
        if ls.tsc_khz:
            append += f" tsc_early_khz={ls.tsc_khz}"
    else:
        machine = f"pc,accel={ls.accel}"
        bus = "pci"
    fwd = f"hostfwd=tcp:127.0.0.1:{ls.ssh_port}-:22"
    for guest, host in sorted(ls.forwards.items()):
        fwd += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
    if ls.isolated:
        fwd += ",restrict=on"
    for port, path in sorted(ls.guest_services.items()):
        fwd += f",guestfwd=tcp:{SERVICE_ADDRESS}:{port}-cmd:socat STDIO UNIX-CONNECT:{path}"
    net_dev = f"virtio-net-{bus},netdev=n0" + (",romfile=" if bus == "pci" else "")
    argv = [
        binary,
        "-name", ls.name,
        "-no-user-config", "-nodefaults",
        "-machine", machine,
        "-cpu", "host" if ls.accel == "kvm" else "max",
        "-smp", str(ls.spec.vcpus),
        "-m", str(ls.spec.memory_mb),
        "-kernel", ls.kernel,
        "-initrd", ls.initrd,
        "-append", append,
        "-drive", f"file={ls.disk},if=none,id=d0,format=qcow2,{TOP_FILE_OPTIONS}",
        "-device", f"virtio-blk-{bus},drive=d0",
        "-netdev", f"user,id=n0,{fwd}",
        "-device", net_dev,
        "-device", f"virtio-rng-{bus}",
        "-chardev", f"socket,id=agent,path={sockets / 'agent.sock'},server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", "virtserialport,chardev=agent,name=devbox.agent",
        "-chardev", f"file,id=ser0,path={d / 'console.log'},append=on",
        "-serial", "chardev:ser0",
        "-display", "none",
        "-qmp", f"unix:{sockets / 'qmp.sock'},server=on,wait=off",
        "-sandbox", sandbox(spawn=bool(ls.guest_services), dropping_user=bool(run_as)),
    ]  # fmt: skip
    if run_as:
        argv += ["-runas", run_as]
    if ram is not None:
        backend = ram_backend_id(ls.machine)
        share = "on" if ram.shared else "off"
        argv[argv.index("-machine") + 1] += f",memory-backend={backend}"
        argv += [
            "-object",
            f"memory-backend-file,id={backend},size={ls.spec.memory_mb}M,"
            f"mem-path={ram.path},share={share}",
        ]
        if incoming is not None:
            # x-ignore-shared must be on before the state is read, and QEMU 7.2 sets it
            # only over QMP: the machine starts the restore itself (`Machine.launch`).
            incoming = "defer"
    if incoming is not None:
        # -S: the guest runs only on our `cont`, after the agent channel is connected, so the
        # agent never sees the host "disconnected" and its first request is answered at once.
        argv += ["-S", "-incoming", incoming]
    return argv
