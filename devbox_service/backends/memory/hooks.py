"""The test hooks: what tests use to steer `MemoryBackend` and watch what it was asked.

Plain attributes and methods:

- `delay`: seconds every boot (and each boot of a branch) takes, under the instance's lock,
  after the argument checks; lets a test observe a devbox in `provisioning`.
- `fail_next(method, exc, target=None)`: the next call of `method` raises `exc` instead of
  doing anything. Queued failures fire once each, oldest first. See `fail_next` for where.
- `calls`: every public call as `(method, args)`, in call order, recorded before any check.
- `kill(instance_id)`: the VM process dies; see `kill` for what the backend then reports.
- `disk_layers()`: the disk layers records still reference (the fake's disk pool).
- `max_concurrent_boots`: the most boots ever in their restore (`delay`) at once; shows that
  a branch boots concurrently without timing it.

Every public `VMBackend` method starts with `_enter`, which records the call and fires a
queued failure, so no method can forget either.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from devbox_service.backends.base import InvalidState, MachineSpec, VMBackend
from devbox_service.backends.memory.records import LIVE
from devbox_service.backends.memory.state import MemoryState

_METHODS = frozenset(VMBackend.__abstractmethods__)


@dataclass(frozen=True)
class Failure:
    """A failure queued by `fail_next`."""

    method: str
    target: str | None
    exc: Exception


class Hooks(MemoryState):
    """The call log, injected failures, VM deaths and the disk pool, over the shared state."""

    def __init__(self, *, spec: MachineSpec, delay: float, ssh_key_path: str) -> None:
        super().__init__(spec=spec, ssh_key_path=ssh_key_path)
        self.delay = delay
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.max_concurrent_boots = 0
        self._booting = 0  # boots in their restore right now
        self._failures: list[Failure] = []

    def fail_next(self, method: str, exc: Exception, *, target: str | None = None) -> None:
        """Make the next call of `method` (a `VMBackend` method name) raise `exc`.

        With `target`, only a call one of whose ids equals it (instance or snapshot id) fires.
        Most methods fail on entry, before any check, and change nothing. `boot` fails after
        its id checks and `delay`, where a real restore would fail; nothing is left behind.
        `branch` fails in the boot of `target` (or of its first id), after the other ids have
        booted, so the roll-back runs: they are deleted and `exc` is raised. A branch's boots
        are not calls of `boot` and do not take `boot` failures.
        """
        if method not in _METHODS:
            raise ValueError(f"{method!r} is not a VMBackend method")
        self._failures.append(Failure(method, target, exc))

    @property
    def pending_failures(self) -> list[tuple[str, str | None]]:
        """Failures queued by `fail_next` that have not fired, as (method, target)."""
        return [(f.method, f.target) for f in self._failures]

    def calls_to(self, method: str) -> list[tuple[object, ...]]:
        """The argument tuples of every recorded call of `method`."""
        return [args for name, args in self.calls if name == method]

    def kill(self, instance_id: str) -> None:
        """Simulate the VM process of a running or paused instance dying (crash, OOM kill).

        As in the driver, the instance does not disappear and its record is not updated at
        once: `get_instance`/`list_instances` still report the old state. The backend notices
        when it next needs the process: save, pause, resume, reboot, standby and stop then
        raise `InvalidState(state="stopped")` and the instance is `stopped` from then on (a
        second `stop` succeeds, `wake` cold-boots it); `start()` marks it `stopped` too.
        `stats` raises `InvalidState(state="stopped")` without updating the record, and
        `expose_port` of a new port raises `QMPFailed`. `delete` works as usual.
        """
        rec = self._instance(instance_id)
        if rec.state not in LIVE or rec.dead:
            raise InvalidState(f"instance {instance_id} has no VM process", state=rec.state)
        rec.dead = True

    def disk_layers(self) -> set[str]:
        """Layers referenced by an instance or snapshot: what the driver keeps on disk."""
        used: set[str] = set()
        for inst in self._instances.values():
            used.update(inst.chain)
        for snap in self._snapshots.values():
            used.update(snap.chain)
        if self._boot is not None:
            used.update(self._boot.chain)
        for sized in self._sized_boots.values():
            used.update(sized.chain)
        return used

    # the failure machinery ------------------------------------------------------------------

    def _enter(self, method: str, *args: object, fire: bool = True) -> None:
        """Record a public call and, unless the method fires later itself, fail it if asked."""
        self.calls.append((method, args))
        if fire:
            self._fire(method, {a for a in args if isinstance(a, str)}, untargeted=True)

    def _fire(self, method: str, ids: Collection[str], *, untargeted: bool) -> None:
        for n, f in enumerate(self._failures):
            if f.method == method and (f.target in ids or (untargeted and f.target is None)):
                del self._failures[n]
                raise f.exc
