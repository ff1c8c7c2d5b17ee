"""Guest consoles are cut back once over their limit, keeping the latest output."""

from __future__ import annotations

from pathlib import Path

from devbox_service.backends.qemu.console import cap


def test_a_console_over_its_limit_keeps_only_its_tail(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"old\n" * 5000 + b"the latest line\n")
    assert cap(console, limit=100_000) is False, "under the limit nothing changes"
    assert cap(console, limit=10_000, keep=1000) is True
    kept = console.read_bytes()
    assert len(kept) < 1100 and kept.endswith(b"the latest line\n")
    assert kept.startswith(b"[earlier console output cut]\n")
    with console.open("ab") as appending:  # QEMU's O_APPEND writes land at the new end
        appending.write(b"after\n")
    assert console.read_bytes().endswith(b"the latest line\nafter\n")
    assert cap(tmp_path / "missing.log") is False
