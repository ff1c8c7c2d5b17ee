"""Work no request waits for, on the in-memory VM backend: start-up recovery after a restart
and the standby policy. The real-VM versions are tests/vm/test_devboxes_api.py (restart) and
tests/vm/test_standby.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from litestar.testing import AsyncTestClient
from support import Api, create_devbox, wait_ready, wait_status

from devbox_service.app import create_app
from devbox_service.backends.base import BackendError, InstanceState
from devbox_service.backends.memory import MemoryBackend
from devbox_service.devboxes.background import CRASHED, LOST_VM
from devbox_service.devboxes.models import (
    DevboxStatus,
    SnapshotKind,
    SnapshotRecord,
    SnapshotStatus,
)
from devbox_service.settings import Settings


async def image_id(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    return str(images["data"][0]["id"])


async def test_restart_marks_lost_vms_finishes_deletes_and_removes_orphans(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    settings = make_settings(vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        kept = (await create_devbox(api, await image_id(api)))["id"]
        lost = (await create_devbox(api, await image_id(api)))["id"]
        deleting = (await create_devbox(api, await image_id(api)))["id"]
        paused = (await create_devbox(api, await image_id(api)))["id"]
        await api.services.devbox_core.store.update(deleting, status=DevboxStatus.DELETING)
    # while the service is down: one VM vanishes, one is paused behind its back, and a VM
    # appears that no record owns
    await fake_backend.delete(lost)
    await fake_backend.pause(paused)
    (image,) = await fake_backend.list_images()
    await fake_backend.boot(image.boot_snapshot_id, "orphan")

    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        auth = api.auth(api.admin_key)
        statuses = {
            d["id"]: d["status"]
            for d in (await client.get("/api/devboxes", headers=auth)).json()["data"]
        }
        assert statuses == {kept: "ready", lost: "error", paused: "paused"}
        lost_record = await api.services.devbox_core.store.get(lost)
        assert lost_record is not None and lost_record.error == LOST_VM
    assert {i.id for i in await fake_backend.list_instances()} == {kept, paused}


async def test_paused_devboxes_go_to_standby_and_resume_from_it(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    settings = make_settings(vm_backend="qemu", ssh_port=0, standby_after_seconds=0.3)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        auth = api.auth(api.admin_key)
        devbox_id = (await create_devbox(api, await image_id(api)))["id"]
        await client.post(f"/api/devboxes/{devbox_id}/pause", headers=auth)
        deadline = time.monotonic() + 10
        while (await fake_backend.get_instance(devbox_id)).state is not InstanceState.STANDBY:
            assert time.monotonic() < deadline, "the paused devbox never went to standby"
            await asyncio.sleep(0.05)
        shown = await client.get(f"/api/devboxes/{devbox_id}", headers=auth)
        assert shown.json()["status"] == "paused", "standby is shown as paused"
        resumed = await client.post(f"/api/devboxes/{devbox_id}/resume", headers=auth)
        assert resumed.json()["status"] == "ready"
        assert (await fake_backend.get_instance(devbox_id)).state is InstanceState.RUNNING
        await wait_status(api, api.admin_key, devbox_id)


async def test_a_create_cut_short_by_a_restart_is_finished_at_the_next_start(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    settings = make_settings(vm_backend="qemu", ssh_port=0)
    fake_backend.delay = 60  # the restore is still under way when the service stops
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        created = await client.post(
            "/api/devboxes",
            params={"snapshot_id": await image_id(api)},
            headers=api.auth(api.admin_key),
        )
        assert created.status_code == 200 and created.json()["status"] == "provisioning"
        devbox_id = created.json()["id"]
    assert devbox_id not in {i.id for i in await fake_backend.list_instances()}
    fake_backend.delay = 0
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        ready = await wait_status(api, api.admin_key, devbox_id)
        assert ready["status"] == "ready", "an accepted create is finished, not lost"
    assert devbox_id in {i.id for i in await fake_backend.list_instances()}


async def test_a_vm_whose_process_died_turns_error_and_resume_brings_it_back(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    devbox_id = (await create_devbox(fake_api, await image_id(fake_api)))["id"]
    assert await fake_api.services.vm_watch.check() == []
    fake_backend.kill(devbox_id)
    assert await fake_api.services.vm_watch.check() == [devbox_id]
    shown = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=auth)
    assert shown.json()["status"] == "error", "a dead VM is not reported ready"
    record = await fake_api.services.devbox_core.store.get(devbox_id)
    assert record is not None and record.error == CRASHED
    resumed = await fake_api.client.post(f"/api/devboxes/{devbox_id}/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.json()["status"] == "ready", resumed.text
    assert (await fake_backend.get_instance(devbox_id)).state is InstanceState.RUNNING

    fake_backend.kill(devbox_id)
    await fake_api.services.vm_watch.check()
    rebooted = await fake_api.client.post(f"/api/devboxes/{devbox_id}/reboot", headers=auth)
    assert rebooted.status_code == 200
    await wait_status(fake_api, fake_api.admin_key, devbox_id)


async def test_a_devbox_whose_boot_failed_cannot_be_resumed(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    fake_backend.fail_next("branch", RuntimeError("no disk"))
    created = await fake_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": await image_id(fake_api)},
        headers=fake_api.auth(fake_api.admin_key),
    )
    devbox_id = created.json()["id"]
    await wait_status(fake_api, fake_api.admin_key, devbox_id, "error")
    refused = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/resume", headers=fake_api.auth(fake_api.admin_key)
    )
    assert refused.status_code == 409 and "delete it" in refused.json()["detail"]


async def test_work_accepted_before_a_restart_is_finished_after_it(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    """Statuses and pending snapshots are the record of intent: a reboot or resume under way,
    and saves written or not yet written by the backend, are all finished at the next start."""
    settings = make_settings(vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        core = api.services.devbox_core
        rebooting, resuming, saving, written = [
            (await create_devbox(api, await image_id(api)))["id"] for _ in range(4)
        ]
        await core.store.update(rebooting, status=DevboxStatus.REBOOTING)
        await fake_backend.pause(resuming)
        await core.store.update(resuming, status=DevboxStatus.RESUMING)
        principal = await api.services.identities.authenticate(api.admin_key)
        pending = {}
        for devbox_id in (saving, written):
            record = await core.store.get(devbox_id)
            assert record is not None
            snapshot = SnapshotRecord(
                id=f"snapshot_{devbox_id[-8:]}",
                org_id=record.org_id,
                user_id=principal.user_id,
                devbox_id=devbox_id,
                name="cut short",
                kind=SnapshotKind.SAVE,
                status=SnapshotStatus.PENDING,
                vcpus=1,
                memory_mb=256,
                disk_mb=2048,
                created_at=time.time(),
            )
            await core.snapshots.insert(snapshot)
            pending[devbox_id] = snapshot.id
        await fake_backend.save(written, pending[written])  # written, not recorded as such
    reboots_before = len(fake_backend.calls_to("reboot"))

    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        for devbox_id in (rebooting, resuming, saving, written):
            await wait_status(api, api.admin_key, devbox_id)
        assert len(fake_backend.calls_to("reboot")) == reboots_before + 1
        assert (await fake_backend.get_instance(resuming)).state is InstanceState.RUNNING
        deadline = time.monotonic() + 30
        for devbox_id, snapshot_id in pending.items():
            while (record := await api.services.devbox_core.store.get(devbox_id)) is not None:
                if record.current_save_id == snapshot_id:
                    break
                assert time.monotonic() < deadline, f"the save of {devbox_id} was not finished"
                await asyncio.sleep(0.05)
            shown = await client.get(
                f"/api/snapshots/{snapshot_id}", headers=api.auth(api.admin_key)
            )
            assert shown.json()["status"] == "ready", shown.text
            timeline = (
                await client.get(f"/api/devboxes/{devbox_id}", headers=api.auth(api.admin_key))
            ).json()["timeline"]
            assert [e["snapshot_id"] for e in timeline if e["type"] == "save"] == [snapshot_id]
        assert {s.id for s in await fake_backend.list_snapshots()} >= set(pending.values())


async def test_a_resume_cut_short_that_fails_again_leaves_the_devbox_paused(
    make_settings: Callable[..., Settings], fake_backend: MemoryBackend
) -> None:
    """Recovery resumes by the one resume path, so a failure there rolls back as a failed
    resume asked for now does: `paused`, no resume in the timeline, ready to resume again."""
    settings = make_settings(vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        devbox_id = (await create_devbox(api, await image_id(api)))["id"]
        await fake_backend.pause(devbox_id)
        await api.services.devbox_core.store.update(devbox_id, status=DevboxStatus.RESUMING)
    fake_backend.fail_next("resume", BackendError("the host is out of memory"))

    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        api = Api(client, settings)
        shown = await wait_status(api, api.admin_key, devbox_id, "paused")
        assert "resume" not in [e["type"] for e in shown["timeline"]]
        auth = api.auth(api.admin_key)
        resumed = await client.post(f"/api/devboxes/{devbox_id}/resume", headers=auth)
        assert resumed.status_code == 200 and resumed.json()["status"] == "ready", resumed.text
