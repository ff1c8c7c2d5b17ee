"""Pins `MemoryBackend` to the `VMBackend` contract as `QemuBackend` implements it, so service
tests built on the fake cannot rely on behaviour the real driver would refuse. What both
backends are checked on alike is in tests/contract; here: every transition, the fake's disk
layers and its test hooks."""

from __future__ import annotations

import asyncio

import pytest

from devbox_service import errors
from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    BackendTimeout,
    GuestUnreachable,
    InstanceState,
    InvalidState,
    MachineSpec,
    NotFound,
)
from devbox_service.backends.memory import MemoryBackend

RUNNING, PAUSED = InstanceState.RUNNING, InstanceState.PAUSED
STANDBY, STOPPED = InstanceState.STANDBY, InstanceState.STOPPED


@pytest.fixture
async def backend() -> MemoryBackend:
    b = MemoryBackend()
    await b.start()
    await b.ensure_image()
    return b


async def boot_id(b: MemoryBackend) -> str:
    (image,) = await b.list_images()
    return image.boot_snapshot_id


async def instance_in(b: MemoryBackend, state: InstanceState, iid: str = "vm") -> str:
    """Boot `iid` and bring it into `state` through the public API."""
    await b.boot(await boot_id(b), iid)
    if state is PAUSED:
        await b.pause(iid)
    elif state is STANDBY:
        await b.standby(iid)
    elif state is STOPPED:
        await b.stop(iid)
    assert (await b.get_instance(iid)).state is state
    return iid


# images ------------------------------------------------------------------------------------


async def test_default_image_and_boot_snapshot_appear_after_ensure_image() -> None:
    b = MemoryBackend(spec=MachineSpec(vcpus=2, memory_mb=512))
    assert await b.list_images() == []
    assert await b.list_snapshots() == []
    lines: list[str] = []
    image = await b.ensure_image(lines.append)
    assert lines
    assert image.default
    assert image.boot_snapshot_id.startswith("boot-")
    assert await b.ensure_image() == image  # built once
    assert await b.list_images() == [image]
    boot = await b.get_snapshot(image.boot_snapshot_id)
    assert (boot.image_id, boot.parent_snapshot_id) == (image.id, None)
    assert boot.spec == MachineSpec(vcpus=2, memory_mb=512)
    assert [s.id for s in await b.list_snapshots()] == [image.boot_snapshot_id]


async def test_boot_snapshot_cannot_be_deleted_or_overwritten(backend: MemoryBackend) -> None:
    sid = await boot_id(backend)
    with pytest.raises(InvalidState) as exc:
        await backend.delete_snapshot(sid)
    assert exc.value.state == "boot"
    await backend.boot(sid, "vm")
    with pytest.raises(AlreadyExists):
        await backend.save("vm", sid)
    with pytest.raises(AlreadyExists):
        await backend.save("vm", "boot-anything")


# errors ------------------------------------------------------------------------------------


def test_backend_errors_sit_under_the_domain_categories() -> None:
    assert issubclass(NotFound, errors.NotFound)
    assert issubclass(AlreadyExists, errors.Conflict)
    assert issubclass(InvalidState, errors.Conflict)
    assert issubclass(GuestUnreachable, errors.Unreachable)
    assert issubclass(BackendTimeout, errors.Failed)


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "x.tmp", "a" * 65])
async def test_ids_are_checked_like_path_components(backend: MemoryBackend, bad: str) -> None:
    with pytest.raises(BackendError) as exc:
        await backend.boot(await boot_id(backend), bad)
    assert type(exc.value) is BackendError
    await backend.boot(await boot_id(backend), "vm")
    with pytest.raises(BackendError) as exc:
        await backend.save("vm", bad)
    assert type(exc.value) is BackendError


async def test_boot_of_a_taken_id_raises_already_exists(backend: MemoryBackend) -> None:
    sid = await boot_id(backend)
    first = await backend.boot(sid, "vm")
    with pytest.raises(AlreadyExists):
        await backend.boot(sid, "vm")
    assert await backend.list_instances() == [first]


# the state machine -------------------------------------------------------------------------

X = None  # InvalidState, state unchanged
TRANSITIONS: dict[str, dict[InstanceState, InstanceState | None]] = {
    #            from running   from paused  from standby  from stopped
    "pause": {RUNNING: PAUSED, PAUSED: X, STANDBY: X, STOPPED: X},
    "resume": {RUNNING: X, PAUSED: RUNNING, STANDBY: X, STOPPED: X},
    "reboot": {RUNNING: RUNNING, PAUSED: RUNNING, STANDBY: X, STOPPED: X},
    "stop": {RUNNING: STOPPED, PAUSED: STOPPED, STANDBY: STOPPED, STOPPED: STOPPED},
    "standby": {RUNNING: STANDBY, PAUSED: STANDBY, STANDBY: X, STOPPED: X},
    "wake": {RUNNING: X, PAUSED: X, STANDBY: RUNNING, STOPPED: RUNNING},
    "save": {RUNNING: RUNNING, PAUSED: PAUSED, STANDBY: X, STOPPED: X},
}


@pytest.mark.parametrize(
    ("op", "start", "end"),
    [(op, s, e) for op, row in TRANSITIONS.items() for s, e in row.items()],
)
async def test_state_machine(
    backend: MemoryBackend, op: str, start: InstanceState, end: InstanceState | None
) -> None:
    iid = await instance_in(backend, start)

    async def run() -> None:
        if op == "save":
            await backend.save(iid, "snap")
        else:
            await getattr(backend, op)(iid)

    if end is None:
        with pytest.raises(InvalidState) as exc:
            await run()
        assert exc.value.state == start
        assert (await backend.get_instance(iid)).state is start
    else:
        await run()
        assert (await backend.get_instance(iid)).state is end


async def test_standby_and_wake_keep_ports_and_restart_the_clock(backend: MemoryBackend) -> None:
    iid = await instance_in(backend, RUNNING)
    host_port = await backend.expose_port(iid, 8080)
    before = await backend.get_instance(iid)
    await backend.standby(iid)
    assert (await backend.stats(iid)).rss_mb == 0.0  # no process, no memory
    woken = await backend.wake(iid)
    assert woken.state is RUNNING
    assert woken.ssh == before.ssh
    assert woken.exposed_ports == {8080: host_port}
    assert woken.started_at >= before.started_at


# snapshots ---------------------------------------------------------------------------------


async def test_save_records_lineage_and_the_instance_keeps_its_snapshot_id(
    backend: MemoryBackend,
) -> None:
    sid = await boot_id(backend)
    await backend.boot(sid, "vm")
    s1 = await backend.save("vm", "s1")
    s2 = await backend.save("vm", "s2")
    assert (s1.parent_snapshot_id, s2.parent_snapshot_id) == (sid, "s1")
    assert s1.image_id == (await backend.list_images())[0].id
    assert (await backend.get_instance("vm")).snapshot_id == sid
    with pytest.raises(AlreadyExists):
        await backend.save("vm", "s1")
    assert [s.id for s in await backend.list_snapshots()] == [sid, "s1", "s2"]


async def test_an_instance_keeps_the_layers_of_the_snapshot_it_saved(
    backend: MemoryBackend,
) -> None:
    await backend.boot(await boot_id(backend), "vm")
    await backend.save("vm", "s1")
    layers = backend.disk_layers()
    await backend.delete_snapshot("s1")
    assert backend.disk_layers() == layers
    assert (await backend.save("vm", "s2")).parent_snapshot_id == "s1"


async def test_deleting_a_snapshot_never_breaks_its_dependants(backend: MemoryBackend) -> None:
    boot_layers = backend.disk_layers()
    await backend.boot(await boot_id(backend), "parent")
    await backend.save("parent", "s1")
    await backend.delete("parent")
    (child,) = await backend.branch("s1", ["child"])
    await backend.save("child", "s2")
    await backend.boot("s2", "grandchild")
    layers = backend.disk_layers()

    for sid in ("s1", "s2"):
        await backend.delete_snapshot(sid)
        with pytest.raises(NotFound):
            await backend.get_snapshot(sid)
        with pytest.raises(NotFound):
            await backend.boot(sid, "other")
    assert backend.disk_layers() == layers  # every layer is still used by an instance
    assert (await backend.get_instance("child")).snapshot_id == child.snapshot_id == "s1"
    # the dependants still do everything, and what they save still boots
    await backend.standby("child")
    await backend.wake("child")
    s3 = await backend.save("child", "s3")
    assert s3.parent_snapshot_id == "s2"  # lineage names a deleted snapshot; that is fine
    await backend.boot("s3", "s3-child")
    await backend.save("grandchild", "s4")

    await backend.delete("child")
    await backend.delete("grandchild")
    assert backend.disk_layers() > boot_layers  # s3, s4 and s3-child still hold layers
    await backend.delete("s3-child")
    for sid in ("s3", "s4"):
        await backend.delete_snapshot(sid)
    assert backend.disk_layers() == boot_layers  # nothing leaks once nobody refers to a layer


# branch ------------------------------------------------------------------------------------


async def test_branch_boots_every_id(backend: MemoryBackend) -> None:
    infos = await backend.branch(await boot_id(backend), ["a", "b", "c"])
    assert [i.id for i in infos] == ["a", "b", "c"]
    assert {i.state for i in infos} == {RUNNING}
    assert len({i.ssh.port for i in infos}) == 3
    assert all(i.ssh.host == "127.0.0.1" and i.exposed_ports == {} for i in infos)
    assert await backend.branch(await boot_id(backend), []) == []


async def test_branch_with_duplicate_ids_boots_nothing(backend: MemoryBackend) -> None:
    with pytest.raises(AlreadyExists):
        await backend.branch(await boot_id(backend), ["a", "b", "a"])
    assert await backend.list_instances() == []


async def test_branch_onto_a_taken_id_rolls_the_others_back(backend: MemoryBackend) -> None:
    taken = await backend.boot(await boot_id(backend), "b")
    with pytest.raises(AlreadyExists):
        await backend.branch(await boot_id(backend), ["a", "b", "c"])
    assert await backend.list_instances() == [taken]


# ports and stats ---------------------------------------------------------------------------


async def test_expose_port_is_stable_per_instance_and_guest_port(backend: MemoryBackend) -> None:
    a, b = await backend.branch(await boot_id(backend), ["a", "b"])
    ports = {
        (iid, gp): await backend.expose_port(iid, gp) for iid in ("a", "b") for gp in (80, 8080)
    }
    assert len(set(ports.values()) | {a.ssh.port, b.ssh.port}) == 6
    assert await backend.expose_port("a", 80) == ports["a", 80]
    assert await backend.expose_port("a", 22) == a.ssh.port
    assert (await backend.get_instance("a")).exposed_ports == {
        80: ports["a", 80],
        8080: ports["a", 8080],
    }
    await backend.stop("b")
    assert await backend.expose_port("b", 9000) not in ports.values()  # any state
    for bad in (0, 65536):
        with pytest.raises(BackendError):
            await backend.expose_port("a", bad)


async def test_stats_of_live_and_stopped_instances(backend: MemoryBackend) -> None:
    iid = await instance_in(backend, PAUSED)
    live = await backend.stats(iid)
    assert live.rss_mb > 0 and live.uptime_seconds >= 0
    await backend.stop(iid)
    assert (await backend.stats(iid)).uptime_seconds == 0.0


# reconcile ---------------------------------------------------------------------------------


async def test_reconcile_removes_what_no_record_owns(backend: MemoryBackend) -> None:
    sid = await boot_id(backend)
    await backend.branch(sid, ["keep", "drop1", "drop2"])
    await backend.save("keep", "s-keep")
    await backend.save("keep", "s-drop")
    removed = await backend.reconcile({"keep", "unknown"}, {"s-keep"})
    assert sorted(removed) == ["drop1", "drop2", "s-drop"]
    assert [i.id for i in await backend.list_instances()] == ["keep"]
    assert [s.id for s in await backend.list_snapshots()] == [sid, "s-keep"]
    assert await backend.reconcile(set(), set()) == ["keep", "s-keep"]
    assert [s.id for s in await backend.list_snapshots()] == [sid]


# test hooks --------------------------------------------------------------------------------


async def test_fail_next_fires_once_and_leaves_nothing_behind(backend: MemoryBackend) -> None:
    sid = await boot_id(backend)
    backend.fail_next("boot", BackendTimeout("restore timed out"))
    with pytest.raises(BackendTimeout):
        await backend.boot(sid, "vm")
    assert await backend.list_instances() == []
    assert backend.pending_failures == []
    await backend.boot(sid, "vm")

    backend.fail_next("pause", BackendError("qmp broke"))
    with pytest.raises(BackendError, match="qmp broke"):
        await backend.pause("vm")
    assert (await backend.get_instance("vm")).state is RUNNING
    await backend.pause("vm")

    with pytest.raises(ValueError):
        backend.fail_next("no_such_method", BackendError("x"))


async def test_fail_next_with_a_target_waits_for_that_id(backend: MemoryBackend) -> None:
    await backend.branch(await boot_id(backend), ["a", "b"])
    backend.fail_next("standby", BackendError("disk full"), target="b")
    await backend.standby("a")
    assert backend.pending_failures == [("standby", "b")]
    with pytest.raises(BackendError, match="disk full"):
        await backend.standby("b")
    assert (await backend.get_instance("b")).state is RUNNING


@pytest.mark.parametrize("target", [None, "b"])
async def test_failed_branch_rolls_back(backend: MemoryBackend, target: str | None) -> None:
    backend.fail_next("branch", GuestUnreachable("no ssh", console_tail="panic"), target=target)
    with pytest.raises(GuestUnreachable):
        await backend.branch(await boot_id(backend), ["a", "b", "c"])
    assert await backend.list_instances() == []
    assert backend.pending_failures == []
    assert len(await backend.branch(await boot_id(backend), ["a", "b", "c"])) == 3


async def test_delay_lets_a_test_watch_a_boot_in_flight(backend: MemoryBackend) -> None:
    backend.delay = 0.3
    sid = await boot_id(backend)
    branching = asyncio.create_task(backend.branch(sid, ["a", "b"]))
    await asyncio.sleep(0.05)
    assert not branching.done()
    assert await backend.list_instances() == []  # exists only once running
    with pytest.raises(NotFound):
        await backend.get_instance("a")
    again = asyncio.create_task(backend.boot(sid, "a"))  # waits for the first boot of "a"
    assert len(await branching) == 2
    assert backend.max_concurrent_boots == 2  # the boots of a branch overlap
    with pytest.raises(AlreadyExists):
        await again


async def test_calls_are_recorded_in_order(backend: MemoryBackend) -> None:
    sid = await boot_id(backend)
    backend.calls.clear()
    await backend.branch(sid, ["a", "b"])
    await backend.pause("a")
    with pytest.raises(InvalidState):
        await backend.pause("a")
    assert backend.calls == [
        ("branch", (sid, ("a", "b"))),
        ("pause", ("a",)),
        ("pause", ("a",)),  # recorded even though it failed
    ]
    assert backend.calls_to("pause") == [("a",), ("a",)]
    assert backend.calls_to("boot") == []  # a branch's boots are not boot calls
    assert backend.calls_to("delete") == []


async def test_killed_vm_is_noticed_like_the_driver_does(backend: MemoryBackend) -> None:
    await backend.branch(await boot_id(backend), ["a", "b", "c"])
    for iid in ("a", "b", "c"):
        backend.kill(iid)
    # not noticed yet: the record still says running
    assert {i.state for i in await backend.list_instances()} == {RUNNING}
    with pytest.raises(InvalidState) as exc:
        await backend.stats("a")
    assert exc.value.state == "stopped"
    assert (await backend.get_instance("a")).state is RUNNING
    # an operation that needs the process notices it
    with pytest.raises(InvalidState) as exc:
        await backend.pause("a")
    assert exc.value.state == "stopped"
    assert (await backend.get_instance("a")).state is STOPPED
    assert (await backend.wake("a")).state is RUNNING  # cold boot
    # stop also notices first, then succeeds
    with pytest.raises(InvalidState):
        await backend.stop("b")
    assert (await backend.stop("b")).state is STOPPED
    # a restart of the service notices too
    await backend.start()
    assert (await backend.get_instance("c")).state is STOPPED
    await backend.delete("c")
    with pytest.raises(InvalidState):
        backend.kill("b")  # stopped: no process to kill
    with pytest.raises(NotFound):
        backend.kill("c")


async def test_close_drops_control_until_start(backend: MemoryBackend) -> None:
    iid = await instance_in(backend, RUNNING)
    await backend.close()
    assert not backend.started
    with pytest.raises(InvalidState):
        await backend.pause(iid)
    assert (await backend.get_instance(iid)).state is RUNNING  # the VM kept running
    await backend.start()
    assert (await backend.pause(iid)).state is PAUSED
