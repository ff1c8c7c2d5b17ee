"""The devbox core is the only writer of a devbox's status and the only holder of its lock:
no other module under devbox_service/devboxes/ may write `status=` to the store or index a
`locks` table, so no change of a devbox skips the transition table (a source scan)."""

from __future__ import annotations

import ast
from pathlib import Path

DEVBOXES = Path(__file__).resolve().parents[2] / "devbox_service" / "devboxes"
CORE = {"core.py"}
"""The core's own modules: the only ones allowed to write statuses and take the locks."""


def offences(source: str) -> list[str]:
    """Each status written to a store (`….update(…, status=…)`) and each `….locks[…]`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and any(k.arg == "status" for k in node.keywords)
        ):
            found.append(f"line {node.lineno}: writes a status ({ast.unparse(node.func)})")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr.lstrip("_") == "locks"
        ):
            found.append(f"line {node.lineno}: takes a devbox lock ({ast.unparse(node)})")
    return found


def test_only_the_core_writes_statuses_and_takes_devbox_locks() -> None:
    found = {
        path.name: offences(path.read_text())
        for path in sorted(DEVBOXES.glob("*.py"))
        if path.name not in CORE
    }
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_scan_finds_what_it_forbids() -> None:
    source = (
        "async def f(core, x):\n"
        "    async with core.locks[x]:\n"
        "        await core.store.update(x, status=DevboxStatus.ERROR, error='e')\n"
        "    await self._core.store.update(x, ttl_expire_at=None)\n"
    )
    assert [line.split(":")[0] for line in offences(source)] == ["line 2", "line 3"]
    assert offences((DEVBOXES / "core.py").read_text()), "the core itself does both"
