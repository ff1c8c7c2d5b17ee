"""Which files a running QEMU's disk really is, read back over QMP.

A save may end before its record is written, and layers a save put on are opened from fd
sets, so the chain on record and the one in use can differ; garbage collection must trust the
one in use.
"""

from __future__ import annotations

import json
import logging

from devbox_service.backends.base import BackendError
from devbox_service.backends.qemu.session import FDSET_PREFIX, MachineSession

log = logging.getLogger(__name__)


async def live_chain(machine: MachineSession, fallback: list[str]) -> list[str]:
    """The disk chain QEMU really uses (a save may have ended before its record was written).

    Layers a save put on (`put_overlay`) are named `/dev/fdset/N` by QEMU (or a `json:` name
    around it); their paths are the opaques of those fd sets. A name that maps to no path
    leaves `fallback`: a wrong chain would let garbage collection delete a layer in use.
    """
    try:
        blocks = await machine.qmp("query-block")
        for block in blocks:
            if block.get("device") == "d0":
                names: list[str] = []
                img = block["inserted"]["image"]
                while img is not None:
                    names.append(img["filename"])
                    img = img.get("backing-image")
                fdsets = [_fdset(name) for name in names]
                paths = await _fdset_paths(machine) if any(n is not None for n in fdsets) else {}
                chain = [
                    name if fdset is None else paths.get(fdset, "")
                    for name, fdset in zip(names, fdsets, strict=True)
                ]
                if all(p.startswith("/") and not p.startswith(FDSET_PREFIX) for p in chain):
                    return chain
                log.warning("disk chain of %s not understood: %s", machine.launch_spec.name, names)
    except (BackendError, KeyError, TypeError, ValueError):
        pass
    return fallback


def _fdset(name: str) -> int | None:
    """The fd set a QEMU file name opens, if any: `/dev/fdset/N`, or the file in a `json:`
    name (QEMU's name for a node whose backing is not the one its header names)."""
    if name.startswith("json:"):
        file = json.loads(name[len("json:") :]).get("file")
        if isinstance(file, dict):
            name = str(file.get("filename", ""))
        elif isinstance(file, str):
            name = file
    if name.startswith(FDSET_PREFIX):
        return int(name[len(FDSET_PREFIX) :])
    return None


async def _fdset_paths(machine: MachineSession) -> dict[int, str]:
    """fd set id -> the path its fd was opened from (`put_overlay` gives it as opaque)."""
    paths: dict[int, str] = {}
    for fdset in await machine.qmp("query-fdsets"):
        for fd in fdset.get("fds", []):
            if fd.get("opaque"):
                paths[int(fdset["fdset-id"])] = str(fd["opaque"])
    return paths
