"""Unix socket paths that fit: the kernel limits them to about 108 bytes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

MAX_LENGTH = 90


def short_socket_path(path: Path) -> Path:
    """`path` itself when it fits; otherwise a stable short name under the temp dir (the same
    `path` always maps to the same name, so a restarted service finds its sockets again)."""
    if len(str(path)) <= MAX_LENGTH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"devbox-sockets-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base / f"{digest}.sock"


def guest_socket_dir(data_dir: Path, shared_gid: int | None) -> Path:
    """Where the Unix sockets that guests reach (through QEMU's socat) live.

    Without a group to share with (QEMU runs as the service's user): `data_dir/run`, as
    always. With one (a root service runs QEMU as another user), the data dir is closed to
    that user (and root's home is 0700), so a directory under /run named after the data dir,
    0750 root:<QEMU's group>, made so by `prepare_guest_socket_dir`. What the sockets lead
    to (the HTTP API's relay, the egress proxy) is no more than a guest reaches anyway.
    """
    if shared_gid is None:
        return data_dir / "run"
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path("/run/devbox-service") / digest


def prepare_guest_socket_dir(path: Path, shared_gid: int | None) -> None:
    """Create `path` 0700, or (with a group) 0750 owner:group under a 0755 parent we own."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if shared_gid is None:
        return
    if path.parent.lstat().st_uid != os.geteuid():  # no one else may swap what is under it
        raise PermissionError(f"{path.parent} is not owned by the service's user")
    os.chmod(path.parent, 0o755)
    os.chown(path, os.geteuid(), shared_gid)
    os.chmod(path, 0o750)


def share_socket(path: Path, shared_gid: int | None) -> None:
    """A listening socket: 0600, or 0660 owner:group when QEMU runs as another user (a
    client needs write permission on a socket to connect)."""
    if shared_gid is not None:
        os.chown(path, os.geteuid(), shared_gid)
        path.chmod(0o660)
    else:
        path.chmod(0o600)
