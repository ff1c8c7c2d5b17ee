"""The Morph instance view of devboxes, on the in-memory VM backend: the wire shapes the SDK
is strict about, metadata filters, pages, and what is refused with a clear answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from support import Api, wait_status

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Conflict


async def start(api: Api, key: str, **body: Any) -> dict[str, Any]:
    images = (await api.client.get("/api/image", headers=api.auth(key))).json()["data"]
    started = await api.client.post(
        "/api/instance",
        params={"snapshot_id": images[0]["id"]},
        json={"metadata": None, "ttl_seconds": None, "ttl_action": None, **body},
        headers=api.auth(key),
    )
    assert started.status_code == 200, started.text
    await wait_status(api, key, started.json()["id"])
    answer: dict[str, Any] = (
        await api.client.get(f"/api/instance/{started.json()['id']}", headers=api.auth(key))
    ).json()
    return answer


async def test_an_instance_is_a_devbox_in_the_contracts_shape(fake_api: Api) -> None:
    key = fake_api.admin_key
    images = (await fake_api.client.get("/api/image", headers=fake_api.auth(key))).json()
    assert images["object"] == "list"
    image = images["data"][0]
    assert set(image) == {"id", "object", "name", "description", "disk_size", "created"}
    assert image["object"] == "image" and isinstance(image["disk_size"], int)

    instance = await start(fake_api, key, metadata={"env": "t"})
    assert instance["object"] == "instance" and instance["status"] == "ready"
    assert isinstance(instance["created"], int)
    assert instance["networking"] == {"internal_ip": "10.0.2.15", "http_services": []}
    assert instance["metadata"] == {"env": "t"}
    assert "ttl" not in instance  # omitted, never null
    assert instance["wake_on"] == {"wake_on_ssh": True, "wake_on_http": True}
    assert set(instance["spec"]) == {"vcpus", "memory", "disk_size"}
    assert instance["refs"]["image_id"] == image["id"]
    devbox = await fake_api.client.get(
        f"/api/devboxes/{instance['id']}", headers=fake_api.auth(key)
    )
    assert devbox.status_code == 200 and devbox.json()["id"] == instance["id"]  # one record


async def test_instances_render_from_records_and_an_exec_is_one_use(
    fake_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance view has no timeline, so none is read; an exec restarts the TTL once
    (the auth guard notes it, the way into the guest does not again)."""
    auth = fake_api.auth(fake_api.admin_key)
    services = fake_api.services
    instance = await start(fake_api, fake_api.admin_key)
    timelines: list[Sequence[str]] = []

    async def events_for(ids: Sequence[str]) -> dict[str, list[Any]]:
        timelines.append(ids)
        return {i: [] for i in ids}

    monkeypatch.setattr(services.devbox_core.store, "events_for", events_for)
    for path in (f"/api/instance/{instance['id']}", "/api/instance", "/api/instance/list"):
        assert (await fake_api.client.get(path, headers=auth)).status_code == 200
    assert timelines == []

    touched: list[str] = []
    touch = services.devbox_core.touch

    async def counted(devbox_id: str) -> None:
        touched.append(devbox_id)
        await touch(devbox_id)

    async def execute(
        endpoint: SSHEndpoint, command: str, timeout: float, max_bytes: int
    ) -> tuple[int, str, str, bool]:
        return 0, f"ran {command}", "", False

    monkeypatch.setattr(services.devbox_core, "touch", counted)
    monkeypatch.setattr(services.guest_connections, "execute", execute)
    ran = await fake_api.client.post(
        f"/api/instance/{instance['id']}/exec", json={"command": ["true"]}, headers=auth
    )
    assert ran.json() == {"exit_code": 0, "stdout": "ran true", "stderr": ""}
    assert touched == [instance["id"]]


async def test_metadata_filters_pages_and_lifecycle(fake_api: Api) -> None:
    key = fake_api.admin_key
    auth = fake_api.auth(key)
    first = await start(fake_api, key, metadata={"role": "a"})
    second = await start(fake_api, key, metadata={"role": "b"})
    updated = await fake_api.client.post(
        f"/api/instance/{second['id']}/metadata", json={"extra": "x"}, headers=auth
    )
    assert updated.json()["metadata"] == {"role": "b", "extra": "x"}
    found = await fake_api.client.get(
        "/api/instance", params={"metadata[role]": "b", "metadata[extra]": "x"}, headers=auth
    )
    assert [i["id"] for i in found.json()["data"]] == [second["id"]]
    page = (await fake_api.client.get("/api/instance/list?page=2&limit=1", headers=auth)).json()
    assert page["total"] == 2 and page["size"] == 1 and page["page"] == 2
    assert page["total_pages"] == 2 and page["has_prev"] and not page["has_next"]
    assert [i["id"] for i in page["instances"]] == [second["id"]]

    paused = await fake_api.client.post(f"/api/instance/{first['id']}/pause", headers=auth)
    assert paused.json()["status"] == "paused"
    resumed = await fake_api.client.post(f"/api/instance/{first['id']}/resume", headers=auth)
    assert resumed.json()["status"] == "ready"
    stopped = await fake_api.client.delete(f"/api/instance/{first['id']}", headers=auth)
    assert stopped.status_code == 204
    assert (
        await fake_api.client.get(f"/api/instance/{first['id']}", headers=auth)
    ).status_code == 404
    listed = (await fake_api.client.get("/api/instance", headers=auth)).json()["data"]
    assert [i["id"] for i in listed] == [second["id"]]


async def test_what_is_not_supported_yet_or_not_allowed_is_refused_clearly(fake_api: Api) -> None:
    key = fake_api.admin_key
    auth = fake_api.auth(key)
    assert (await fake_api.client.get("/api/instance/devbox_nope", headers=auth)).status_code == 404
    outsider = await fake_api.new_user("instance-outsider")
    instance = await start(fake_api, key)
    other = await fake_api.client.get(
        f"/api/instance/{instance['id']}", headers=fake_api.auth(outsider)
    )
    assert other.status_code == 404
    assert (await fake_api.client.get("/api/instance", headers=fake_api.auth(outsider))).json()[
        "data"
    ] == []
    empty = await fake_api.client.post(
        f"/api/instance/{instance['id']}/exec", json={"command": []}, headers=auth
    )
    assert empty.status_code == 422
    too_big = await fake_api.client.post(
        f"/api/instance/{instance['id']}/reboot", json={"memory": 99999}, headers=auth
    )
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["body", "memory"]


async def test_a_reboot_with_a_spec_is_a_cold_reboot_into_it(fake_api: Api) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    instance = await start(fake_api, fake_api.admin_key)
    rebooted = await fake_api.client.post(
        f"/api/instance/{instance['id']}/reboot",
        json={"vcpus": 2, "memory": 512, "disk_size": 4096, "metadata": {"size": "m"}},
        headers=auth,
    )
    assert rebooted.status_code == 200, rebooted.text
    ready = await wait_status(fake_api, fake_api.admin_key, instance["id"])
    assert ready["spec"] == {"vcpus": 2, "memory": 512, "disk_size": 4096}
    assert ready["metadata"]["size"] == "m"
    vm = await fake_api.services.devbox_core.backend.get_instance(instance["id"])
    assert (vm.spec.vcpus, vm.spec.memory_mb, vm.spec.disk_mb) == (2, 512, 4096)
    fake_api.services.admission._host_memory = lambda: 2048
    no_room = await fake_api.client.post(
        f"/api/instance/{instance['id']}/reboot", json={"memory": 8192}, headers=auth
    )
    assert no_room.status_code == 429 and no_room.headers["x-devbox-limit"] == "host_memory"
    unchanged = await fake_api.client.get(f"/api/instance/{instance['id']}", headers=auth)
    assert unchanged.json()["spec"]["memory"] == 512 and unchanged.json()["status"] == "ready"


async def test_snapshots_with_digests_metadata_pages_boot_branch_and_delete(fake_api: Api) -> None:
    key = fake_api.admin_key
    auth = fake_api.auth(key)
    created = await fake_api.client.post("/api/snapshot", json={"digest": "setup-1"}, headers=auth)
    assert created.status_code == 200, created.text
    snapshot = created.json()
    assert snapshot["status"] == "ready" and snapshot["digest"] == "setup-1"
    assert snapshot["metadata"] == {} and snapshot["refs"]["image_id"]
    again = await fake_api.client.post("/api/snapshot", json={"digest": "setup-1"}, headers=auth)
    assert again.json()["id"] == snapshot["id"]  # a digest is a cache key
    too_big = await fake_api.client.post("/api/snapshot", json={"memory": 99999}, headers=auth)
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["body", "memory"]

    outsider = fake_api.auth(await fake_api.new_user("digest-outsider"))
    theirs = await fake_api.client.post(
        "/api/snapshot", json={"digest": "setup-1"}, headers=outsider
    )
    assert theirs.status_code == 200 and theirs.json()["id"] != snapshot["id"]  # never leaks

    labelled = await fake_api.client.post(
        f"/api/snapshot/{snapshot['id']}/metadata", json={"kind": "base"}, headers=auth
    )
    assert labelled.json()["metadata"] == {"kind": "base"}
    replaced = await fake_api.client.post(
        f"/api/snapshot/{snapshot['id']}/metadata", json={"other": "x"}, headers=auth
    )
    assert replaced.json()["metadata"] == {"other": "x"}  # replaced whole, as the contract says
    by_digest = await fake_api.client.get(
        "/api/snapshot", params={"digest": "setup-1"}, headers=auth
    )
    assert [s["id"] for s in by_digest.json()["data"]] == [snapshot["id"]]
    page = (await fake_api.client.get("/api/snapshot/list?limit=1", headers=auth)).json()
    assert page["total"] == 1 and [s["id"] for s in page["snapshots"]] == [snapshot["id"]]

    booted = await fake_api.client.post(
        f"/api/snapshot/{snapshot['id']}/boot", json={}, headers=auth
    )
    assert booted.status_code == 200, booted.text
    instance_id = booted.json()["id"]
    await wait_status(fake_api, key, instance_id)
    saved = await fake_api.client.post(
        f"/api/instance/{instance_id}/snapshot", params={"digest": "step-2"}, json={}, headers=auth
    )
    assert saved.status_code == 200 and saved.json()["status"] == "ready"
    repeat = await fake_api.client.post(
        f"/api/instance/{instance_id}/snapshot", params={"digest": "step-2"}, headers=auth
    )
    assert repeat.json()["id"] == saved.json()["id"]

    branched = await fake_api.client.post(
        f"/api/instance/{instance_id}/branch", params={"count": 2}, headers=auth
    )
    assert branched.status_code == 200, branched.text
    body = branched.json()
    assert body["snapshot"]["status"] == "ready" and len(body["instances"]) == 2
    for child in body["instances"]:
        assert child["refs"]["snapshot_id"] == body["snapshot"]["id"]

    exposed = await fake_api.client.post(
        f"/api/instance/{instance_id}/http", json={"name": "web", "port": 8080}, headers=auth
    )
    assert exposed.status_code == 200, exposed.text
    (service,) = exposed.json()["networking"]["http_services"]
    assert service["name"] == "web" and service["port"] == 8080 and service["url"]
    bad_name = await fake_api.client.post(
        f"/api/instance/{instance_id}/http", json={"name": "Web!", "port": 8080}, headers=auth
    )
    assert bad_name.status_code == 422
    hidden = await fake_api.client.delete(f"/api/instance/{instance_id}/http/web", headers=auth)
    assert hidden.json()["networking"]["http_services"] == []

    deleted = await fake_api.client.delete(f"/api/snapshot/{saved.json()['id']}", headers=auth)
    assert deleted.status_code == 204
    gone = await fake_api.client.get(f"/api/snapshot/{saved.json()['id']}", headers=auth)
    assert gone.status_code == 404


async def test_disks_grow_once_per_key_never_shrink_and_count_against_the_quota(
    fake_api: Api,
) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    instance = await start(fake_api, fake_api.admin_key)
    path = f"/api/instance/{instance['id']}/disk-resize"
    resized = await fake_api.client.post(
        path, json={"disk_size": 4096}, headers={**auth, "Idempotency-Key": "k1"}
    )
    assert resized.status_code == 200, resized.text
    operation = resized.json()
    assert operation["object"] == "instance_disk_resize"
    assert operation["instance_id"] == instance["id"] and operation["requested_disk_size"] == 4096
    assert operation["previous_disk_size"] == instance["spec"]["disk_size"]
    assert operation["status"] == "succeeded" and operation["phase"] == "complete"
    assert operation["capacity_generation"] == 1 and operation["completed_at"]
    grown = await fake_api.client.get(f"/api/instance/{instance['id']}", headers=auth)
    assert grown.json()["spec"]["disk_size"] == 4096

    replay = await fake_api.client.post(
        path, json={"disk_size": 4096}, headers={**auth, "Idempotency-Key": "k1"}
    )
    assert replay.json()["id"] == operation["id"]  # the same key answers the same operation
    reused = await fake_api.client.post(
        path, json={"disk_size": 8192}, headers={**auth, "Idempotency-Key": "k1"}
    )
    assert reused.status_code == 409 and "k1" in reused.json()["detail"]
    status = await fake_api.client.get(f"{path}/{operation['id']}", headers=auth)
    assert status.json() == operation
    assert (await fake_api.client.get(f"{path}/diskresize_nope", headers=auth)).status_code == 404

    smaller = await fake_api.client.post(path, json={"disk_size": 3000}, headers=auth)
    assert smaller.status_code == 422 and smaller.json()["detail"][0]["loc"] == [
        "body",
        "disk_size",
    ]
    same = await fake_api.client.post(path, json={"disk_size": 4096}, headers=auth)
    assert same.json()["status"] == "succeeded" and same.json()["capacity_generation"] == 1
    out_of_range = await fake_api.client.post(path, json={"disk_size": 100}, headers=auth)
    assert out_of_range.status_code == 422
    bad_key = await fake_api.client.post(
        path, json={"disk_size": 5000}, headers={**auth, "Idempotency-Key": "a b"}
    )
    assert bad_key.status_code == 400 and "Idempotency-Key" in bad_key.json()["detail"]
    over_quota = await fake_api.client.post(path, json={"disk_size": 1000000}, headers=auth)
    assert over_quota.status_code == 429
    assert over_quota.headers["x-devbox-limit"] == "disk_mb_per_user"

    member = fake_api.auth(await fake_api.new_user("resize-member", org="default"))
    not_theirs = await fake_api.client.post(path, json={"disk_size": 6000}, headers=member)
    assert not_theirs.status_code == 403 and "owner" in not_theirs.json()["detail"]
    resized_by_member = await fake_api.client.post(
        f"/api/instance/{instance['id']}/reboot", json={"memory": 512}, headers=member
    )
    assert resized_by_member.status_code == 403  # the size is the owner's to change
    await fake_api.client.post(f"/api/instance/{instance['id']}/pause", headers=auth)
    await wait_status(fake_api, fake_api.admin_key, instance["id"], "paused")
    paused = await fake_api.client.post(path, json={"disk_size": 6000}, headers=auth)
    assert paused.status_code == 409 and "resume it first" in paused.json()["detail"]

    outsider = fake_api.auth(await fake_api.new_user("resize-outsider"))
    theirs = await fake_api.client.post(path, json={"disk_size": 6000}, headers=outsider)
    assert theirs.status_code == 404
    unknown = await fake_api.client.post(
        "/api/instance/devbox_nope/disk-resize", json={"disk_size": 4096}, headers=auth
    )
    assert unknown.status_code == 404


async def test_images_boot_in_any_size_and_snapshots_keep_their_memory(fake_api: Api) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    sized = await fake_api.client.post(
        "/api/snapshot",
        json={"image_id": "morphvm-minimal", "vcpus": 2, "memory": 1024, "disk_size": 10000},
        headers=auth,
    )
    assert sized.status_code == 200, sized.text
    assert sized.json()["spec"] == {"vcpus": 2, "memory": 1024, "disk_size": 10000}
    small = await fake_api.client.post(
        "/api/snapshot", json={"vcpus": 1, "memory": 128, "disk_size": 700}, headers=auth
    )
    image_disk = fake_api.services.settings.vm_disk_mb
    assert small.json()["spec"] == {"vcpus": 1, "memory": 128, "disk_size": image_disk}

    snapshot_id = sized.json()["id"]
    other_memory = await fake_api.client.post(
        f"/api/snapshot/{snapshot_id}/boot", json={"memory": 512}, headers=auth
    )
    assert other_memory.status_code == 422
    assert other_memory.json()["detail"][0]["loc"] == ["body", "memory"]
    assert "saved with" in other_memory.json()["detail"][0]["msg"]
    larger = await fake_api.client.post(
        f"/api/snapshot/{snapshot_id}/boot", json={"disk_size": 12000}, headers=auth
    )
    assert larger.status_code == 200, larger.text
    booted = await wait_status(fake_api, fake_api.admin_key, larger.json()["id"])
    assert booted["spec"]["disk_size"] == 12000 and booted["spec"]["memory"] == 1024
    backend_spec = (await fake_api.services.devbox_core.backend.get_instance(booted["id"])).spec
    assert backend_spec.disk_mb == 12000  # the VM's disk really grew, not only the record

    backend = fake_api.services.devbox_core.backend
    made = [call for call in backend.calls if call[0] == "image_snapshot"]  # type: ignore[attr-defined]
    fake_api.services.admission._host_memory = lambda: 4096
    no_room = await fake_api.client.post("/api/snapshot", json={"memory": 8192}, headers=auth)
    assert no_room.status_code == 429 and no_room.headers["x-devbox-limit"] == "host_memory"
    # refused before the image was booted in that size (no VM of it ever ran)
    assert [c for c in backend.calls if c[0] == "image_snapshot"] == made  # type: ignore[attr-defined]

    too_many = await fake_api.client.post("/api/snapshot", json={"vcpus": 65}, headers=auth)
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == [
        "body",
        "vcpus",
    ]


async def test_wake_on_is_set_shown_and_honoured(fake_api: Api) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    instance = await start(fake_api, fake_api.admin_key)
    changed = await fake_api.client.post(
        f"/api/instance/{instance['id']}/wake-on", json={"wake_on_ssh": False}, headers=auth
    )
    assert changed.json()["wake_on"] == {"wake_on_ssh": False, "wake_on_http": True}
    devbox = await fake_api.client.get(f"/api/devboxes/{instance['id']}", headers=auth)
    assert devbox.json()["wake_on"] == {"wake_on_ssh": False, "wake_on_http": True}
    await fake_api.client.post(f"/api/instance/{instance['id']}/pause", headers=auth)
    with pytest.raises(Conflict, match="does not wake on SSH"):
        await fake_api.services.guest_access.connect_target(instance["id"])
    shown = await fake_api.client.get(f"/api/instance/{instance['id']}", headers=auth)
    assert shown.json()["status"] == "paused"  # not woken
    await fake_api.services.guest_access.connect_target(instance["id"], woken_by="HTTP")
    woken = await fake_api.client.get(f"/api/instance/{instance['id']}", headers=auth)
    assert woken.json()["status"] == "ready"  # HTTP still wakes it


async def test_ttls_pause_or_stop_idle_instances_and_activity_extends_them(fake_api: Api) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    core = fake_api.services.devbox_core
    now = [1_000_000.0]
    core.clock = lambda: now[0]
    reaper = fake_api.services.ttl_reaper
    idle = await start(fake_api, fake_api.admin_key, ttl_seconds=60, ttl_action="pause")
    assert idle["ttl"] == {"ttl_seconds": 60, "ttl_expire_at": 1_000_060, "ttl_action": "pause"}

    now[0] += 30
    await fake_api.client.post(
        f"/api/instance/{idle['id']}/metadata", json={"a": "b"}, headers=auth
    )
    now[0] += 40  # 70 s after the start, 40 s after the last action
    await fake_api.client.get(f"/api/instance/{idle['id']}", headers=auth)  # reading is not use
    assert await reaper.run_once() == []
    now[0] += 25
    assert await reaper.run_once() == [idle["id"]]
    paused = (await fake_api.client.get(f"/api/instance/{idle['id']}", headers=auth)).json()
    assert paused["status"] == "paused"  # memory kept, not stopped
    assert (await fake_api.client.post(f"/api/instance/{idle['id']}/resume", headers=auth)).json()[
        "status"
    ] == "ready"

    doomed = await start(fake_api, fake_api.admin_key)
    set_ttl = await fake_api.client.post(
        f"/api/instance/{doomed['id']}/ttl", json={"ttl_seconds": 10}, headers=auth
    )
    assert set_ttl.json()["ttl"]["ttl_action"] == "stop"  # the default when none was set
    cleared = await fake_api.client.post(
        f"/api/instance/{idle['id']}/ttl", json={"ttl_seconds": None}, headers=auth
    )
    assert "ttl" not in cleared.json()
    now[0] += 11
    assert await reaper.run_once() == [doomed["id"]]
    gone = await fake_api.client.get(f"/api/instance/{doomed['id']}", headers=auth)
    assert gone.status_code == 404
    kept = await fake_api.client.get(f"/api/instance/{idle['id']}", headers=auth)
    assert kept.json()["status"] == "ready"
    bad = await fake_api.client.post(
        f"/api/instance/{idle['id']}/ttl", json={"ttl_seconds": 0}, headers=auth
    )
    assert bad.status_code == 422


async def test_unused_snapshots_are_reclaimed_at_their_ttl_and_used_ones_wait(
    fake_api: Api,
) -> None:
    auth = fake_api.auth(fake_api.admin_key)
    now = [2_000_000.0]
    fake_api.services.devbox_core.clock = lambda: now[0]
    reaper = fake_api.services.snapshot_reaper

    async def snapshot(**body: Any) -> dict[str, Any]:
        made = await fake_api.client.post("/api/snapshot", json=body, headers=auth)
        assert made.status_code == 200, made.text
        answer: dict[str, Any] = made.json()
        return answer

    unused = await snapshot(digest="unused", ttl_seconds=10)
    assert unused["ttl"]["ttl_seconds"] == 10 and unused["ttl"]["ttl_expire_at"] == 2_000_010
    used = await snapshot(digest="used", ttl_seconds=10)
    now[0] += 5
    booted = await fake_api.client.post(f"/api/snapshot/{used['id']}/boot", headers=auth)
    assert booted.status_code == 200
    await wait_status(fake_api, fake_api.admin_key, booted.json()["id"])
    hit = await snapshot(digest="unused")  # a digest hit is a use too
    assert hit["ttl"]["ttl_expire_at"] == 2_000_015

    now[0] += 12  # past both expiries
    assert await reaper.run_once() == [unused["id"]]
    gone = await fake_api.client.get(f"/api/snapshot/{unused['id']}", headers=auth)
    assert gone.status_code == 404
    kept = (await fake_api.client.get(f"/api/snapshot/{used['id']}", headers=auth)).json()
    assert kept["ttl"]["waiting_for"] == f"devbox {booted.json()['id']} was started from it"

    cleared = await fake_api.client.post(
        f"/api/snapshot/{used['id']}/ttl", json={"ttl_seconds": None}, headers=auth
    )
    assert cleared.json()["ttl"] == {
        "ttl_seconds": None,
        "ttl_expire_at": None,
        "waiting_for": None,
    }
    bad = await fake_api.client.post(
        f"/api/snapshot/{used['id']}/ttl", json={"ttl_seconds": -1}, headers=auth
    )
    assert bad.status_code == 422


async def test_snapshot_metadata_has_a_total_cap_checked_before_any_work(fake_api: Api) -> None:
    key = fake_api.admin_key
    instance = await start(fake_api, key)
    huge = {f"k{i}": "v" * 1000 for i in range(80)}  # 80 KB of JSON
    refused = await fake_api.client.post(
        f"/api/instance/{instance['id']}/snapshot",
        json={"metadata": huge},
        headers=fake_api.auth(key),
    )
    assert refused.status_code == 413 and "65536" in refused.json()["detail"], refused.text
    listed = (await fake_api.client.get("/api/snapshot", headers=fake_api.auth(key))).json()
    assert listed["data"] == []  # nothing was saved for the refused request
    saved = await fake_api.client.post(
        f"/api/instance/{instance['id']}/snapshot", json={}, headers=fake_api.auth(key)
    )
    snapshot_id = saved.json()["id"]
    relabel = await fake_api.client.post(
        f"/api/snapshot/{snapshot_id}/metadata", json=huge, headers=fake_api.auth(key)
    )
    assert relabel.status_code == 413, relabel.text


async def test_an_image_boots_in_memory_sizes_from_a_fixed_list(fake_api: Api) -> None:
    """Each size an image boots in keeps a boot snapshot on the host: callers choose from a
    list (and any disk, grown after the boot) rather than make one per size they invent."""
    auth = fake_api.auth(fake_api.admin_key)
    odd = await fake_api.client.post("/api/snapshot", json={"memory": 777}, headers=auth)
    assert odd.status_code == 422, odd.text
    assert "128, 256, 512, 1024" in str(odd.json()["detail"]), odd.text
    for disk in (3000, 3001, 3002):
        grown = await fake_api.client.post(
            "/api/snapshot", json={"memory": 512, "disk_size": disk}, headers=auth
        )
        assert grown.status_code == 200, grown.text
        assert grown.json()["spec"]["disk_size"] == disk
    sized = fake_api.services.devbox_core.backend._sized_boots  # type: ignore[attr-defined]
    assert [s.memory_mb for s in sized] == [512]  # one boot snapshot, not one per disk
