"""Prometheus text exposition of what an operator watches: requests (latency by route),
devboxes by status, VM processes and their memory, snapshots, SSH sessions, tmux clients and
template builds. Hand-written (the format is small); no web imports."""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from devbox_service.backends.base import BackendError, InstanceState, VMBackend

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Request latency histograms keyed by (method, route template, status class)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], list[int]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1)
        )
        self._sums: dict[tuple[str, str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, f"{status // 100}xx")
        self._counts[key][bisect.bisect_left(BUCKETS, seconds)] += 1
        self._sums[key] += seconds

    def render(self) -> list[str]:
        name = "devbox_http_request_duration_seconds"
        lines = [f"# HELP {name} HTTP request latency by route.", f"# TYPE {name} histogram"]
        for (method, route, status), counts in sorted(self._counts.items()):
            labels = f'method="{method}",route="{_escape(route)}",status="{status}"'
            total = 0
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{{labels},le="{le}"}} {total}')
            lines.append(f"{name}_sum{{{labels}}} {self._sums[(method, route, status)]:.6f}")
            lines.append(f"{name}_count{{{labels}}} {total}")
        return lines


def gauge(
    name: str, help_text: str, values: Mapping[str, float] | float, label: str = ""
) -> list[str]:
    """One gauge, labelled by `label` when `values` is a mapping."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    if isinstance(values, Mapping):
        lines += [f'{name}{{{label}="{_escape(k)}"}} {v}' for k, v in sorted(values.items())]
    else:
        lines.append(f"{name} {values}")
    return lines


def exposition(blocks: Iterable[list[str]]) -> str:
    return "\n".join(line for block in blocks for line in block) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Gauges:
    """The state-of-the-service figures, read when scraped."""

    def __init__(
        self,
        *,
        devboxes_by_status: Mapping[str, float],
        vms_by_state: Mapping[str, float],
        vm_memory_mb: float,
        warm_pool_mb: float,
        snapshots: float,
        snapshot_bytes: float,
        ssh_sessions: float,
        tmux_guests: float,
        builds_running: float,
    ) -> None:
        self.blocks = [
            gauge("devbox_devboxes", "Devboxes by status.", devboxes_by_status, "status"),
            gauge("devbox_vm_processes", "VMs by backend state.", vms_by_state, "state"),
            gauge(
                "devbox_vm_memory_mb",
                "Memory the VM processes hold (PSS: shared pages counted once in all).",
                vm_memory_mb,
            ),
            gauge(
                "devbox_vm_warm_pool_mb",
                "Memory of the QEMU processes waiting in the warm pool (PSS).",
                warm_pool_mb,
            ),
            gauge("devbox_snapshots", "Snapshots users saved.", snapshots),
            gauge("devbox_snapshot_bytes", "Disk the backend's snapshots use.", snapshot_bytes),
            gauge("devbox_ssh_sessions", "Users connected to the SSH gateway.", ssh_sessions),
            gauge("devbox_tmux_guests", "Guests with tmux control clients.", tmux_guests),
            gauge("devbox_template_builds_running", "Template builds running.", builds_running),
        ]


class VmFigures(NamedTuple):
    by_state: Counter[str]
    memory_mb: float  # what live VM processes hold (PSS)
    warm_pool_mb: float
    snapshot_bytes: float


async def vm_figures(backend: VMBackend | None) -> VmFigures:
    """The VM side of the gauges, read from the backend (all zero without one)."""
    by_state: Counter[str] = Counter()
    memory = 0.0
    if backend is None:
        return VmFigures(by_state, 0.0, 0.0, 0.0)
    for instance in await backend.list_instances():
        by_state[instance.state.value] += 1
        if instance.state in (InstanceState.RUNNING, InstanceState.PAUSED):
            with contextlib.suppress(BackendError):  # it ended meanwhile
                memory += await backend.memory_mb(instance.id)
    snapshot_bytes = sum(s.size_bytes for s in await backend.list_snapshots())
    return VmFigures(by_state, memory, await backend.held_memory_mb(), snapshot_bytes)
