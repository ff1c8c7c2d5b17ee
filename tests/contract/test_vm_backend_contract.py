"""The `VMBackend` contract, checked by the same tests on the in-memory backend (fast, runs by
default) and on QEMU (`-m vm`), so the fake the service tests run on cannot drift from the
driver.

Only what backends/base.py promises is asserted. The QEMU side shares the session's backend
(tests/vm_fixtures.py) and boots few guests, none of which is asked to run a command; every
instance and snapshot a test makes is deleted after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from devbox_service.backends.base import (
    AlreadyExists,
    BackendError,
    ImageInfo,
    InstanceState,
    InvalidState,
    MachineSpec,
    NotFound,
    VMBackend,
)

RUNNING, PAUSED = InstanceState.RUNNING, InstanceState.PAUSED
STANDBY, STOPPED = InstanceState.STANDBY, InstanceState.STOPPED

PREFIX = "ct-"  # every id made here: what the clean-up removes from the shared QEMU backend
UNKNOWN = PREFIX + "unknown"


@pytest.fixture(params=["memory", pytest.param("qemu", marks=pytest.mark.vm)])
def backend(request: pytest.FixtureRequest) -> VMBackend:
    """Each implementation with its default image: a fresh fake per test, and the session's
    QEMU backend (its image and boot snapshot are too slow to make more than once)."""
    name = "fake_backend" if request.param == "memory" else "qemu_backend"
    found = request.getfixturevalue(name)
    assert isinstance(found, VMBackend)
    return found


@pytest.fixture(autouse=True)
async def delete_what_the_test_made(backend: VMBackend) -> AsyncIterator[None]:
    """Also after a failure: QEMU guests outlive the test that booted them."""
    yield
    for instance in await backend.list_instances():
        if instance.id.startswith(PREFIX):
            await backend.delete(instance.id)
    for snapshot in await backend.list_snapshots():
        if snapshot.id.startswith(PREFIX):
            await backend.delete_snapshot(snapshot.id)


async def default_image(backend: VMBackend) -> ImageInfo:
    (image,) = [i for i in await backend.list_images() if i.default]
    return image


@pytest.fixture
async def boot_id(backend: VMBackend) -> str:
    """The default image's boot snapshot, which every instance here starts from."""
    return (await default_image(backend)).boot_snapshot_id


async def refused(call: Awaitable[object], state: InstanceState) -> None:
    """`call` raises InvalidState naming the state that makes no sense for it."""
    with pytest.raises(InvalidState) as exc:
        await call
    assert exc.value.state == state


async def instance_ids(backend: VMBackend) -> set[str]:
    return {i.id for i in await backend.list_instances()}


# images ------------------------------------------------------------------------------------


async def test_the_default_image_and_its_boot_snapshot(backend: VMBackend) -> None:
    image = await default_image(backend)
    again = await backend.ensure_image()
    assert (again.id, again.boot_snapshot_id) == (image.id, image.boot_snapshot_id)  # built once
    boot = await backend.get_snapshot(image.boot_snapshot_id)
    assert (boot.id, boot.image_id, boot.parent_snapshot_id) == (
        image.boot_snapshot_id,
        image.id,
        None,
    )
    assert boot in await backend.list_snapshots()
    assert await backend.image_snapshot(image.id, boot.spec) == boot  # the default size
    with pytest.raises(NotFound):
        await backend.image_snapshot(UNKNOWN, boot.spec)


# instances ---------------------------------------------------------------------------------


async def test_boot_pause_resume_ports_stop_and_delete(backend: VMBackend, boot_id: str) -> None:
    iid = PREFIX + "life"
    info = await backend.boot(boot_id, iid)
    assert (info.id, info.snapshot_id, info.state) == (iid, boot_id, RUNNING)
    assert await backend.get_instance(iid) == info
    assert iid in await instance_ids(backend)
    with pytest.raises(AlreadyExists):
        await backend.boot(boot_id, iid)

    assert (await backend.pause(iid)).state is PAUSED
    await refused(backend.pause(iid), PAUSED)
    assert (await backend.get_instance(iid)).state is PAUSED
    assert (await backend.resume(iid)).state is RUNNING
    await refused(backend.resume(iid), RUNNING)

    assert await backend.grow_disk(iid, info.spec.disk_mb) == info  # not larger: no change

    host_port = await backend.expose_port(iid, 8080)
    assert await backend.expose_port(iid, 8080) == host_port
    assert host_port != info.ssh.port
    assert (await backend.get_instance(iid)).exposed_ports[8080] == host_port
    await backend.unexpose_port(iid, 8080)
    await backend.unexpose_port(iid, 8080)  # none left: nothing to do
    await backend.unexpose_port(iid, 22)  # SSH stays
    after = await backend.get_instance(iid)
    assert 8080 not in after.exposed_ports and after.ssh == info.ssh

    assert (await backend.stop(iid)).state is STOPPED
    assert (await backend.stop(iid)).state is STOPPED
    await refused(backend.pause(iid), STOPPED)

    await backend.delete(iid)
    assert iid not in await instance_ids(backend)
    with pytest.raises(NotFound):
        await backend.get_instance(iid)
    with pytest.raises(NotFound):
        await backend.delete(iid)


async def test_standby_ends_the_process_and_wake_brings_it_back(
    backend: VMBackend, boot_id: str
) -> None:
    iid = PREFIX + "sleeper"
    await backend.boot(boot_id, iid)
    await backend.expose_port(iid, 8080)
    assert await backend.memory_mb(iid) > 0
    assert (await backend.standby(iid)).state is STANDBY
    assert (await backend.get_instance(iid)).state is STANDBY
    await refused(backend.memory_mb(iid), STANDBY)  # no process
    await refused(backend.standby(iid), STANDBY)
    await refused(backend.pause(iid), STANDBY)
    await refused(backend.save(iid, PREFIX + "from-standby"), STANDBY)
    woken = await backend.wake(iid)
    assert woken.state is RUNNING
    assert 8080 in woken.exposed_ports  # a forward outlives the process
    await refused(backend.wake(iid), RUNNING)
    assert await backend.memory_mb(iid) > 0


# snapshots and branches --------------------------------------------------------------------


async def test_save_keeps_the_state_and_a_second_instance_boots_from_it(
    backend: VMBackend, boot_id: str
) -> None:
    source, saved, child = PREFIX + "source", PREFIX + "saved", PREFIX + "child"
    await backend.boot(boot_id, source)
    await backend.pause(source)
    snap = await backend.save(source, saved)
    assert (snap.id, snap.image_id, snap.parent_snapshot_id) == (
        saved,
        (await default_image(backend)).id,
        boot_id,
    )
    assert (await backend.get_instance(source)).state is PAUSED  # it keeps its state
    assert await backend.get_snapshot(saved) == snap
    assert snap in await backend.list_snapshots()
    with pytest.raises(AlreadyExists):
        await backend.save(source, saved)

    info = await backend.boot(saved, child)
    assert (info.snapshot_id, info.state) == (saved, RUNNING)

    # what was built on a deleted snapshot keeps working
    await backend.delete_snapshot(saved)
    with pytest.raises(NotFound):
        await backend.get_snapshot(saved)
    with pytest.raises(NotFound):
        await backend.boot(saved, PREFIX + "orphan")
    assert (await backend.pause(child)).state is PAUSED
    assert (await backend.resume(child)).state is RUNNING
    assert (await backend.resume(source)).state is RUNNING


async def test_branch_is_all_or_nothing_and_reconcile_drops_what_no_record_owns(
    backend: VMBackend, boot_id: str
) -> None:
    a, b, c = PREFIX + "a", PREFIX + "b", PREFIX + "c"
    others = await instance_ids(backend)
    infos = await backend.branch(boot_id, [a, b])
    assert [(i.id, i.snapshot_id, i.state) for i in infos] == [
        (a, boot_id, RUNNING),
        (b, boot_id, RUNNING),
    ]
    assert infos[0].ssh != infos[1].ssh
    assert await backend.branch(boot_id, []) == []
    with pytest.raises(AlreadyExists):  # duplicate ids: nothing boots
        await backend.branch(boot_id, [c, c])
    with pytest.raises(AlreadyExists):  # a taken id: the boot of c is rolled back
        await backend.branch(boot_id, [c, a])
    assert await instance_ids(backend) == others | {a, b}

    kept_snapshots = {s.id for s in await backend.list_snapshots()} - {boot_id}
    assert await backend.reconcile(others | {a}, kept_snapshots) == [b]
    assert await instance_ids(backend) == others | {a}
    assert boot_id in {s.id for s in await backend.list_snapshots()}  # boot snapshots stay


# errors ------------------------------------------------------------------------------------

UNKNOWN_ID_CALLS: dict[str, Callable[[VMBackend], Awaitable[object]]] = {
    "get_instance": lambda b: b.get_instance(UNKNOWN),
    "pause": lambda b: b.pause(UNKNOWN),
    "resume": lambda b: b.resume(UNKNOWN),
    "reboot": lambda b: b.reboot(UNKNOWN),
    "reboot_into": lambda b: b.reboot_into(UNKNOWN, MachineSpec()),
    "grow_disk": lambda b: b.grow_disk(UNKNOWN, 4096),
    "stop": lambda b: b.stop(UNKNOWN),
    "delete": lambda b: b.delete(UNKNOWN),
    "standby": lambda b: b.standby(UNKNOWN),
    "wake": lambda b: b.wake(UNKNOWN),
    "expose_port": lambda b: b.expose_port(UNKNOWN, 8080),
    "unexpose_port": lambda b: b.unexpose_port(UNKNOWN, 8080),
    "stats": lambda b: b.stats(UNKNOWN),
    "memory_mb": lambda b: b.memory_mb(UNKNOWN),
    "save": lambda b: b.save(UNKNOWN, PREFIX + "snap"),
    "get_snapshot": lambda b: b.get_snapshot(UNKNOWN),
    "delete_snapshot": lambda b: b.delete_snapshot(UNKNOWN),
    "boot": lambda b: b.boot(UNKNOWN, PREFIX + "vm"),
    "branch": lambda b: b.branch(UNKNOWN, [PREFIX + "a", PREFIX + "b"]),
    "image_snapshot": lambda b: b.image_snapshot(UNKNOWN, MachineSpec()),
}


@pytest.mark.parametrize("method", UNKNOWN_ID_CALLS)
async def test_unknown_ids_raise_not_found(backend: VMBackend, method: str) -> None:
    before = await instance_ids(backend)
    with pytest.raises(NotFound):
        await UNKNOWN_ID_CALLS[method](backend)
    assert await instance_ids(backend) == before


@pytest.mark.parametrize(
    "bad", ["", "-x", "a/b", "x.tmp", "a" * 65], ids=["empty", "dash", "slash", "tmp", "long"]
)
async def test_ids_that_are_no_plain_names_are_refused(
    backend: VMBackend, boot_id: str, bad: str
) -> None:
    before = await instance_ids(backend)
    with pytest.raises(BackendError):
        await backend.boot(boot_id, bad)
    assert await instance_ids(backend) == before
