"""The QEMU backend's small host helpers (files, processes, ports) and the id check."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devbox_service.backends.base import BackendError, check_id
from devbox_service.backends.qemu.util import (
    file_size,
    free_port,
    host_tsc_khz,
    kill_strays,
    pid_alive,
    proc_pss_kb,
    proc_usage,
    read_json,
    tail,
    write_json_atomic,
)


@pytest.mark.parametrize("value", ["vm-1", "a", "Snap_2.final", "0" * 64, "x.tmp2"])
def test_check_id_accepts_safe_path_components(value: str) -> None:
    assert check_id("instance", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-leading-dash",
        ".hidden",
        "_underscore",
        "a/b",
        "..",
        "with space",
        "x" * 65,
        "work.tmp",  # the suffix of directories still being written
        "ünïcode",
        "new\nline",
        "vm-1\n",  # `$` alone would let a trailing newline through
    ],
)
def test_check_id_rejects_anything_that_is_not_a_plain_name(value: str) -> None:
    with pytest.raises(BackendError) as caught:
        check_id("snapshot", value)
    assert caught.value.message == f"invalid snapshot id {value!r}"


def test_json_written_atomically_reads_back_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"b": [1, 2], "a": None})
    write_json_atomic(path, {"b": [3], "a": "new"})
    assert read_json(path) == {"a": "new", "b": [3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_tail_returns_the_last_lines_and_nothing_for_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


def test_file_size_is_zero_for_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(b"x" * 1234)
    assert file_size(tmp_path / "state") == 1234
    assert file_size(tmp_path / "missing") == 0


def test_pid_alive_checks_the_command_line_marker() -> None:
    me = os.getpid()
    assert pid_alive(me)
    assert pid_alive(me, "python") or pid_alive(me, "pytest")
    assert not pid_alive(me, f"not-in-my-cmdline-{uuid.uuid4().hex}")
    assert not pid_alive(2**22 + 1)  # above the kernel's pid limit


def test_kill_strays_ends_only_processes_naming_the_marker() -> None:
    marker = f"devbox-test-{uuid.uuid4().hex}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    marked = subprocess.Popen([*sleeper, marker])
    other = subprocess.Popen(sleeper)
    try:
        kill_strays(marker)
        assert marked.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_proc_usage_reads_this_process() -> None:
    rss_kb, cpu_seconds = proc_usage(os.getpid())
    assert rss_kb > 1000
    assert 0 < proc_pss_kb(os.getpid()) <= rss_kb  # shared pages (libraries) count in part
    assert cpu_seconds > 0


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_host_tsc_khz_is_a_rate_or_zero() -> None:
    assert host_tsc_khz() >= 0
