"""Admission control: per-user and per-org limits on live devboxes, snapshots and disk, and a
host check on memory (guest RAM plus per-VM overhead against what the host has), applied
before any record is written or VM started, so nobody can starve the host or other tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.backends.base import BackendError, InstanceState, MachineSpec, VMBackend
from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.devboxes.models import DevboxStatus
from devbox_service.devboxes.snapshot_store import SnapshotStore
from devbox_service.devboxes.store import DevboxStore
from devbox_service.errors import LimitReached

IN_MEMORY = (InstanceState.RUNNING, InstanceState.PAUSED)


class Scope(enum.StrEnum):
    USER = "user"
    ORG = "org"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    devboxes: int
    snapshots: int
    disk_mb: int


class LimitOverride(msgspec.Struct, frozen=True, kw_only=True):
    scope: Scope
    subject_id: str
    devboxes: int | None = None
    snapshots: int | None = None
    disk_mb: int | None = None


LIMITS = Table("limits", LimitOverride)


class LimitStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, scope: Scope, subject_id: str) -> LimitOverride | None:
        row = await self.database.fetch_one(
            "SELECT * FROM limits WHERE scope = ? AND subject_id = ?", (scope.value, subject_id)
        )
        return LIMITS.decode(row) if row else None

    async def set(self, override: LimitOverride) -> None:
        async with self.database.transaction() as tx:
            await LIMITS.insert(tx, override, upsert_on=("scope", "subject_id"))


def host_memory_mb() -> int:
    """The host's total memory (MemTotal), in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Admission:
    """Checks a request against the limits; `LimitReached` (429) names the limit and how to
    free room. One lock makes check-then-record atomic across concurrent requests."""

    def __init__(
        self,
        devboxes: DevboxStore,
        snapshots: SnapshotStore,
        limits: LimitStore,
        *,
        user_defaults: Limits,
        org_defaults: Limits,
        memory_reserve_mb: int,
        vm_overhead_mb: int,
        host_memory: Callable[[], int] = host_memory_mb,
    ) -> None:
        self._devboxes = devboxes
        self._snapshots = snapshots
        self._limits = limits
        self._defaults = {Scope.USER: user_defaults, Scope.ORG: org_defaults}
        self._reserve = memory_reserve_mb
        self._overhead = vm_overhead_mb
        self._host_memory = host_memory
        self._lock = asyncio.Lock()
        # snapshots an organization holds outside the snapshot store (its templates' cached
        # steps): they take disk like any save, so they count toward its snapshot limit
        self.unlisted_snapshots: list[Callable[[str], Awaitable[int]]] = []

    async def limits_for(self, scope: Scope, subject_id: str) -> Limits:
        base = self._defaults[scope]
        override = await self._limits.get(scope, subject_id)
        if override is None:
            return base
        return Limits(
            devboxes=_pick(override.devboxes, base.devboxes),
            snapshots=_pick(override.snapshots, base.snapshots),
            disk_mb=_pick(override.disk_mb, base.disk_mb),
        )

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Hold while checking and then recording what was admitted: nobody else is admitted
        in between, so two requests cannot both take the last place."""
        async with self._lock:
            yield

    async def check_devboxes(
        self, principal: Principal, count: int, spec: MachineSpec, backend: VMBackend
    ) -> None:
        """`count` more devboxes of `spec` for this caller. Raises LimitReached."""
        await self._check_counts(principal.user_id, principal.org_id, count, count * spec.disk_mb)
        await self.check_memory(backend, count, spec.memory_mb)

    async def check_disk_growth(self, owner_id: str, org_id: str, extra_mb: int) -> None:
        """`extra_mb` more disk for a devbox of `owner_id` (counted against the owner, who
        may not be the caller). Raises LimitReached."""
        await self._check_counts(owner_id, org_id, 0, extra_mb)

    async def _check_counts(self, user_id: str, org_id: str, count: int, disk_mb: int) -> None:
        """`count` more devboxes holding `disk_mb` more disk in all."""
        live = [r for r in await self._devboxes.all() if r.status is not DevboxStatus.DELETING]
        for scope, subject, mine in (
            (Scope.USER, user_id, [r for r in live if r.user_id == user_id]),
            (Scope.ORG, org_id, [r for r in live if r.org_id == org_id]),
        ):
            limits = await self.limits_for(scope, subject)
            if count and len(mine) + count > limits.devboxes:
                raise LimitReached(
                    f"limit reached: at most {limits.devboxes} devboxes per {scope.value}; "
                    f"you have {len(mine)} and asked for {count} more: delete devboxes you no "
                    "longer need, or ask an admin to raise the limit",
                    limit=f"devboxes_per_{scope.value}",
                )
            disk = sum(r.disk_mb for r in mine)
            if disk + disk_mb > limits.disk_mb:
                raise LimitReached(
                    f"limit reached: at most {limits.disk_mb} MB of devbox disk per "
                    f"{scope.value}; {disk} MB are in use and {disk_mb} MB more "
                    "were asked for: delete devboxes you no longer need, or ask an admin",
                    limit=f"disk_mb_per_{scope.value}",
                )

    async def check_snapshot(self, principal: Principal) -> None:
        """One more saved snapshot for this caller. Raises LimitReached."""
        await self._check_snapshots(principal.org_id, principal.user_id)

    async def check_unlisted_snapshot(self, org_id: str) -> None:
        """One more snapshot of the organization's own (a template step's). Raises
        LimitReached."""
        await self._check_snapshots(org_id, None)

    async def _check_snapshots(self, org_id: str, user_id: str | None) -> None:
        saved = await self._snapshots.for_org(org_id)
        unlisted = sum([await count(org_id) for count in self.unlisted_snapshots])
        counts = [(Scope.ORG, org_id, len(saved) + unlisted)]
        if user_id is not None:
            counts.insert(0, (Scope.USER, user_id, sum(s.user_id == user_id for s in saved)))
        for scope, subject, held in counts:
            limits = await self.limits_for(scope, subject)
            if held + 1 > limits.snapshots:
                raise LimitReached(
                    f"limit reached: at most {limits.snapshots} snapshots per {scope.value} "
                    f"(template build steps included: {unlisted}): delete snapshots you no "
                    "longer need (DELETE /api/snapshots/{id}) or templates whose cached steps "
                    "you do not use, or ask an admin to raise the limit",
                    limit=f"snapshots_per_{scope.value}",
                )

    async def memory_in_use(self, backend: VMBackend) -> float:
        """What VMs hold, in MB. Each counts its guest memory in full plus the per-VM
        overhead (a guest may touch all its memory, undoing any sharing), or what it was
        measured to hold if that is more; the backend's warm pool counts as measured."""
        used = await backend.held_memory_mb()
        for vm in await backend.list_instances():
            if vm.state in IN_MEMORY:
                cost = float(vm.spec.memory_mb + self._overhead)
                with contextlib.suppress(BackendError):
                    cost = max(cost, await backend.memory_mb(vm.id))
                used += cost
        return used

    async def check_memory(self, backend: VMBackend, count: int, memory_mb: int) -> None:
        """Room on the host for `count` more VMs of `memory_mb` (plus each one's overhead)?"""
        await self.check_memory_growth(backend, count * (memory_mb + self._overhead))

    async def check_memory_growth(self, backend: VMBackend, wanted: int) -> None:
        """Room on the host for `wanted` MB more of guest memory? Raises LimitReached."""
        used = round(await self.memory_in_use(backend))
        budget = self._host_memory() - self._reserve
        if used + wanted > budget:
            raise LimitReached(
                f"limit reached: the host has no memory for {wanted} MB more of guests "
                f"({used} MB of {budget} MB are in use): pause or delete devboxes (paused "
                "devboxes go to standby and free their memory), or try later",
                limit="host_memory",
            )


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value
