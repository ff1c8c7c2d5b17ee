"""How every QEMU is confined: a seccomp sandbox, and an unprivileged user under a root service.

QEMU parses guest-controlled device traffic; a bug there must not hand the guest the service's
user (root under `just run`). Two layers:

`-sandbox on,obsolete=deny,elevateprivileges=...,spawn=...,resourcecontrol=deny` (seccomp),
with two options chosen from what this backend needs of QEMU 7.2:

- `spawn`: denied, unless the guest has service addresses (`LaunchSpec.guest_services`, which
  the service always configures: the guest API and the egress proxy). Those are slirp
  `guestfwd=...-cmd:socat ...` forwards, and libslirp forks and execs that command for every
  guest connection: with spawn=deny the seccomp filter kills QEMU at the guest's first
  connection. QEMU 7.2 has no other guestfwd that carries more than one connection (a chardev
  target is a single stream). The spawned socat inherits the filter, the dropped user and
  no_new_privs (a setuid binary gives it nothing), and can only do what the guest could do
  through the forward anyway.
- `elevateprivileges`: denied when QEMU keeps its user. When it drops to another one
  (`-runas`), allowed: QEMU 7.2 installs the filter while parsing its options, before it
  changes user, so deny would kill it at its own setgid(). This costs nothing once the drop
  is done: real, effective and saved ids are all the unprivileged user's, no capability is
  left, and the filter sets no_new_privs, so no set*id call or setuid binary gets root back.

`-runas USER` (QEMU 7.2 has no `-run-with user=`), only when the service runs as root: QEMU
opens everything its command line names as root (disk chain, kernel, initrd, memory files,
console log, its QMP and agent sockets), then becomes USER before the guest runs and before
any guest state is read (an incoming migration is read after the switch). The data and cache
dirs therefore stay closed to USER (0700, files 0600, under root's 0700 home by default).
What QEMU must open *later* is handed to it open instead: migration targets and sources are
fds passed over QMP (`getfd`), the overlay a save puts on the disk is an fd in an fd set
(`add-fd`, opened as /dev/fdset/N). The exception is the guest service sockets that the
spawned socat connects to by path: they live in a directory USER's group can reach
(`devbox_service.sockets.guest_socket_dir`).
"""

from __future__ import annotations

import logging
import os
import pwd

log = logging.getLogger(__name__)

QEMU_USER = "devbox-qemu"
"""The system user `just setup` creates for QEMU (no home, no shell, its own group)."""
FALLBACK_USER = "nobody"
AUTO = "auto"


def sandbox(*, spawn: bool, dropping_user: bool) -> str:
    """The `-sandbox` value (see the module docstring for why spawn and elevateprivileges)."""
    elevate = "allow" if dropping_user else "deny"
    return (
        f"on,obsolete=deny,elevateprivileges={elevate},spawn={'allow' if spawn else 'deny'},"
        "resourcecontrol=deny"
    )


def qemu_user(wanted: str = AUTO, *, quiet: bool = False) -> str:
    """The user QEMU switches to, or "" to keep the service's.

    Only root can switch: a service that is not root runs QEMU as itself (sandboxed). As root,
    `wanted` ("auto": `devbox-qemu`, else `nobody` with a warning unless `quiet`; "": never
    switch).
    """
    if os.geteuid() != 0 or not wanted:
        return ""
    if wanted != AUTO:
        pwd.getpwnam(wanted)  # KeyError: a configured user that does not exist
        return wanted
    try:
        pwd.getpwnam(QEMU_USER)
        return QEMU_USER
    except KeyError:
        if quiet:
            return FALLBACK_USER
        log.warning(
            "user %s does not exist (run `just setup`): QEMU runs as %s instead",
            QEMU_USER,
            FALLBACK_USER,
        )
        return FALLBACK_USER


def user_group(user: str) -> int | None:
    """The primary gid of `user` ("" -> None: nothing to share)."""
    return pwd.getpwnam(user).pw_gid if user else None
