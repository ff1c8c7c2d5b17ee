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
