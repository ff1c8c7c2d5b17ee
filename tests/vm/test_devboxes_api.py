"""The devboxes API end to end: real HTTP through the test client, real VMs, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support import FIXTURES, Api, create_devbox, guest, vm_service, vm_settings, wait_status

from devbox_service.app import create_app

pytestmark = pytest.mark.vm


async def test_created_devbox_is_a_real_vm_with_a_truthful_record(
    vm_api: Api, devbox: dict[str, Any], default_image: dict[str, Any]
) -> None:
    assert await guest(vm_api, devbox["id"], "echo hello from $(uname -s)") == "hello from Linux\n"
    assert devbox["spec"] == {"vcpus": 1, "memory": 256, "disk_size": 2048}
    assert devbox["base_snapshot_id"] == default_image["boot_snapshot_id"]
    assert devbox["refs"] == {
        "snapshot_id": default_image["boot_snapshot_id"],
        "image_id": default_image["id"],
    }
    assert devbox["metadata"] == {"purpose": "tests"}
    assert devbox["wake_on"] == {"wake_on_ssh": True, "wake_on_http": True}
    assert [e["type"] for e in devbox["timeline"]] == ["create"]
    listed = (
        await vm_api.client.get("/api/devboxes", headers=vm_api.auth(vm_api.admin_key))
    ).json()
    assert devbox["id"] in [d["id"] for d in listed["data"]]


async def test_pause_and_resume_keep_a_counter_running(vm_api: Api, devbox: dict[str, Any]) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    await guest(
        vm_api,
        devbox_id,
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; "
        "mv /tmp/counter.new /tmp/counter; sleep 0.1; done'"
        " >/dev/null 2>&1 &",
    )
    await asyncio.sleep(1)
    paused = await vm_api.client.post(f"/api/devboxes/{devbox_id}/pause", headers=vm_api.auth(key))
    assert paused.json()["status"] == "paused"
    again = await vm_api.client.post(f"/api/devboxes/{devbox_id}/pause", headers=vm_api.auth(key))
    assert again.status_code == 200 and again.json()["status"] == "paused"
    refused = await vm_api.client.post(
        f"/api/devboxes/{devbox_id}/reboot", headers=vm_api.auth(key)
    )
    assert refused.status_code == 409 and "paused" in refused.json()["detail"]
    resumed = await vm_api.client.post(
        f"/api/devboxes/{devbox_id}/resume", headers=vm_api.auth(key)
    )
    assert resumed.json()["status"] == "ready"
    first = int(await guest(vm_api, devbox_id, "cat /tmp/counter"))
    await asyncio.sleep(1)
    second = int(await guest(vm_api, devbox_id, "cat /tmp/counter"))
    assert second > first > 0
    noop = await vm_api.client.post(f"/api/devboxes/{devbox_id}/resume", headers=vm_api.auth(key))
    assert noop.status_code == 200 and noop.json()["status"] == "ready"
    summary = (
        await vm_api.client.get(f"/api/devboxes/{devbox_id}/summary", headers=vm_api.auth(key))
    ).json()
    assert summary["last_event"]["type"] == "resume"


async def test_save_then_boot_the_save_keeps_files_and_tmux(
    vm_api: Api, devbox: dict[str, Any]
) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    await guest(
        vm_api,
        devbox_id,
        "echo saved-marker > /root/marker && "
        "tmux new-session -d -s keep 'sh -c \"while :; do sleep 1; done\"'",
    )
    saved = await vm_api.client.post(
        f"/api/devboxes/{devbox_id}/save", json={"name": "first"}, headers=vm_api.auth(key)
    )
    assert saved.status_code == 200, saved.text
    snapshot = saved.json()
    assert snapshot["status"] == "ready" and snapshot["instance_id"] == devbox_id
    record = (
        await vm_api.client.get(f"/api/devboxes/{devbox_id}", headers=vm_api.auth(key))
    ).json()
    assert record["current_save_id"] == snapshot["id"]
    listed = (await vm_api.client.get("/api/snapshots", headers=vm_api.auth(key))).json()
    assert snapshot["id"] in [s["id"] for s in listed["data"]]

    restored = await create_devbox(vm_api, snapshot["id"])
    assert restored["base_snapshot_id"] == snapshot["id"]
    assert await guest(vm_api, restored["id"], "cat /root/marker") == "saved-marker\n"
    assert "keep" in await guest(vm_api, restored["id"], "tmux list-sessions -F '#S'")
    deleted = await vm_api.client.delete(
        f"/api/devboxes/{restored['id']}", headers=vm_api.auth(key)
    )
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True


async def test_branch_two_copies_with_the_parents_files(
    vm_api: Api, devbox: dict[str, Any]
) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    await guest(vm_api, devbox_id, "echo branch-marker > /root/branch-marker")
    response = await vm_api.client.post(
        f"/api/devboxes/{devbox_id}/branch",
        json={"name": "try", "count": 2},
        headers=vm_api.auth(key),
    )
    assert response.status_code == 200, response.text
    children = response.json()["instances"]
    assert len(children) == 2
    for child in children:
        ready = await wait_status(vm_api, key, child["id"])
        assert ready["refs"]["image_id"] == devbox["refs"]["image_id"]
        assert ready["base_snapshot_id"] == ready["refs"]["snapshot_id"]
        assert await guest(vm_api, ready["id"], "cat /root/branch-marker") == "branch-marker\n"
    a, b = [await guest(vm_api, c["id"], "head -c 16 /dev/urandom | od -An -tx1") for c in children]
    assert a != b
    parent = (
        await vm_api.client.get(f"/api/devboxes/{devbox_id}/summary", headers=vm_api.auth(key))
    ).json()
    assert parent["branches_count"] >= 2
    for child in children:
        await vm_api.client.delete(f"/api/devboxes/{child['id']}", headers=vm_api.auth(key))


async def test_delete_removes_the_vm_and_the_record(
    vm_api: Api, default_image: dict[str, Any]
) -> None:
    from devbox_service.backends.base import NotFound

    key = vm_api.admin_key
    devbox_id = (await create_devbox(vm_api, default_image["id"]))["id"]
    assert (
        await vm_api.client.delete(f"/api/devboxes/{devbox_id}", headers=vm_api.auth(key))
    ).status_code == 200
    assert (
        await vm_api.client.get(f"/api/devboxes/{devbox_id}", headers=vm_api.auth(key))
    ).status_code == 404
    with pytest.raises(NotFound):
        await vm_api.services.devbox_core.backend.get_instance(devbox_id)


async def test_uploads_land_in_the_devbox(vm_api: Api, devbox: dict[str, Any]) -> None:
    auth = vm_api.auth(vm_api.admin_key)
    response = await vm_api.client.post(
        f"/api/devboxes/{devbox['id']}/uploads",
        files={"file": ("notes.txt", b"hello upload\n", "text/plain")},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "path": "/tmp/codex-uploads/notes.txt",
        "filename": "notes.txt",
        "size": 13,
        "content_type": "text/plain",
    }
    assert await guest(vm_api, devbox["id"], "cat /tmp/codex-uploads/notes.txt") == "hello upload\n"
    png = FIXTURES.joinpath("pixel.png").read_bytes()
    image = await vm_api.client.post(
        f"/api/devboxes/{devbox['id']}/uploads/image",
        files={"file": ("pic.png", png, "image/png")},
        data={"path": "/tmp/pics"},
        headers=auth,
    )
    assert image.status_code == 200 and image.json()["path"] == "/tmp/pics/pic.png"
    copied = await guest(vm_api, devbox["id"], "od -An -v -tx1 /tmp/pics/pic.png | tr -d ' \\n'")
    assert copied == png.hex()
    not_image = await vm_api.client.post(
        f"/api/devboxes/{devbox['id']}/uploads/image",
        files={"file": ("pic.png", b"plain text", "image/png")},
        headers=auth,
    )
    assert not_image.status_code == 400


async def test_restart_of_the_service_keeps_every_devbox(
    default_image: dict[str, Any], tmp_path: Path
) -> None:
    """Stop the service while a devbox runs; a new service on the same data dir re-adopts it."""
    settings = vm_settings(tmp_path / "data")
    async with vm_service(settings) as api:
        devbox_id = (await create_devbox(api, default_image["id"]))["id"]
        await guest(api, devbox_id, "echo survived > /root/restart-marker")

    async with AsyncTestClient(create_app(settings), timeout=300) as client:
        api = Api(client, settings)
        response = await client.get(f"/api/devboxes/{devbox_id}", headers=api.auth(api.admin_key))
        assert response.status_code == 200 and response.json()["status"] == "ready"
        assert await guest(api, devbox_id, "cat /root/restart-marker") == "survived\n"
        deleted = await client.delete(f"/api/devboxes/{devbox_id}", headers=api.auth(api.admin_key))
        assert deleted.status_code == 200
