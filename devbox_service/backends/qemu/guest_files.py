"""Files written into the guest image; their text is part of the recipe hash."""

from __future__ import annotations

from devbox_service.backends.base import GUEST_PROXY_PORT, GUEST_SERVICE_ADDRESS

# Run once by busybox init: the guest has no systemd, so mounts and network happen here.
SYSINIT = r"""#!/bin/sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb grep -q ' /dev ' /proc/mounts || $bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
$bb mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
$bb mkdir -p /run/sshd /run/lock
$bb ln -sf /proc/self/fd /dev/fd
$bb hostname -F /etc/hostname
$bb ip link set lo up
$bb ip addr add 10.0.2.15/24 dev eth0
$bb ip link set eth0 up
$bb ip route add default via 10.0.2.2
echo "devbox: sysinit done" > /dev/console
"""

# Run by busybox init before reboot or poweroff: leave the ext4 root clean.
SHUTDOWN = r"""#!/bin/sh
/bin/busybox sync
/bin/busybox umount -a -r 2>/dev/null
/bin/busybox mount -o remount,ro / 2>/dev/null
/bin/busybox sync
"""

# sshd and the agent are respawned if they die; sshd -r skips the per-connection re-exec,
# which costs a whole process image load under TCG.
INITTAB = r"""::sysinit:/etc/devbox/sysinit
::respawn:/usr/sbin/sshd -D -r
::respawn:/usr/bin/perl /etc/devbox/agent
::ctrlaltdel:/bin/busybox reboot
::shutdown:/etc/devbox/shutdown
"""

# The guest's network is closed except for two forwarded addresses (see `argv`): the service's
# API and an HTTP proxy to the internet. Tools find the proxy through these variables.
SERVICE_ADDRESS = GUEST_SERVICE_ADDRESS
PROXY_URL = f"http://{SERVICE_ADDRESS}:{GUEST_PROXY_PORT}"
NO_PROXY = f"{SERVICE_ADDRESS},localhost,127.0.0.1,::1"
PROXY_VARIABLES = {
    "http_proxy": PROXY_URL,
    "https_proxy": PROXY_URL,
    "HTTP_PROXY": PROXY_URL,
    "HTTPS_PROXY": PROXY_URL,
    "no_proxy": NO_PROXY,
    "NO_PROXY": NO_PROXY,
}
PROXY_PROFILE = "".join(f"export {k}={v}\n" for k, v in PROXY_VARIABLES.items())
APT_PROXY = f'Acquire::http::Proxy "{PROXY_URL}";\nAcquire::https::Proxy "{PROXY_URL}";\n'

# Drop-in read before Debian's defaults (the first value wins): key auth only, fast handshakes;
# every session (login or not) gets the proxy variables.
SSHD_CONFIG = (
    r"""PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
HostKey /etc/ssh/ssh_host_ed25519_key
"""
    + "SetEnv "
    + " ".join(f"{k}={v}" for k, v in PROXY_VARIABLES.items())
    + "\n"
)

# After a restore the host writes "sync SEC NSEC HEX" on the virtio-serial port devbox.agent:
# the agent steps the clock (it stood still while saved) and reseeds the kernel RNG (clones
# share its state) without an SSH handshake and without spawning a process. "reboot" and
# "poweroff" ask busybox init for a clean restart or shutdown (no ACPI daemon in the guest).
AGENT = r"""#!/usr/bin/perl
use strict;
use warnings;

sub port_path {
    for my $dir (glob "/sys/class/virtio-ports/*") {
        open(my $f, "<", "$dir/name") or next;
        my $name = <$f> // "";
        chomp $name;
        return "/dev/" . (split m{/}, $dir)[-1] if $name eq "devbox.agent";
    }
    return undef;
}

while (1) {
    my $dev = port_path();
    my $port;
    unless ($dev && open($port, "+<", $dev)) {
        select(undef, undef, undef, 1);
        next;
    }
    binmode $port;
    select((select($port), $| = 1)[0]);
    while (defined(my $line = <$port>)) {
        $line =~ s/\s+$//;
        my ($cmd, @arg) = split / /, $line;
        next unless defined $cmd;
        if ($cmd eq "sync" && @arg == 3) {
            # clock_settime(CLOCK_REALTIME, {sec, nsec}); 227 is its x86_64 syscall number
            my $res = syscall(227, 0, pack("q<q<", $arg[0], $arg[1])) == 0 ? "ok" : "err clock $!";
            if (open(my $rng, ">", "/dev/urandom")) {
                binmode $rng;
                syswrite($rng, pack("H*", $arg[2]));
                ioctl($rng, 0x5207, 0) or $res = "err reseed $!";  # RNDRESEEDCRNG
                close $rng;
            }
            print $port "$res\n";
        } elsif ($cmd eq "ping") {
            print $port "pong\n";
        } elsif ($cmd eq "reboot" || $cmd eq "poweroff") {
            print $port "ok\n";
            kill($cmd eq "reboot" ? "TERM" : "USR2", 1);  # what busybox init understands
        }
    }
    close $port;
    # Reads return EOF at once while the host is not connected (service down): poll slowly,
    # an idle guest under TCG must not burn host CPU. The driver connects before a restored
    # guest runs, so restores never wait for this.
    select(undef, undef, undef, 1);
}
"""

# /init of the tiny initramfs: the cloud kernel has its virtio drivers as modules.
INITRAMFS_INIT = r"""#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for m in $($bb cat /modules.order); do
    $bb insmod "/modules/$m.ko" 2>/dev/null
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do $bb usleep 10000; i=$((i + 1)); done
if ! $bb mount -t ext4 -o rw /dev/vda /newroot; then
    echo "devbox initramfs: cannot mount /dev/vda" > /dev/console
    exec $bb sh
fi
$bb umount /proc /sys
$bb mount --move /dev /newroot/dev
exec $bb switch_root /newroot /sbin/init
"""

# In load order: dependencies first.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio-rng",
    "virtio_console",
)

PACKAGES = (
    "openssh-server",
    "tmux",
    "git",
    "curl",
    "ca-certificates",
    "python3",
    "sudo",
    "iproute2",
    "procps",
)
