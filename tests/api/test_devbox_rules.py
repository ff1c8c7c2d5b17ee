"""Devbox rules on the in-memory VM backend: the state machine, the timeline and its counts,
who sees and deletes what, bad input, and what a failing VM does to the record. What needs a
real guest (files, processes, SSH) is proven in tests/vm."""

from __future__ import annotations

from typing import Any

import pytest
from support import Api, create_devbox, wait_status

from devbox_service.auth.models import Role
from devbox_service.backends.base import BackendTimeout, CommandFailed, InstanceState
from devbox_service.backends.memory import MemoryBackend


async def default_image(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    return str(next(i["id"] for i in images["data"] if i["default"]))


async def new_devbox(api: Api, **body: Any) -> dict[str, Any]:
    return await create_devbox(api, await default_image(api), **body)


async def act(api: Api, devbox_id: str, action: str, key: str | None = None, **body: Any) -> Any:
    return await api.client.post(
        f"/api/devboxes/{devbox_id}/{action}",
        json=body or None,
        headers=api.auth(key or api.admin_key),
    )


async def test_lifecycle_follows_the_state_machine_and_keeps_a_timeline(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    devbox = await new_devbox(fake_api, name="rules", metadata={"team": "a"})
    devbox_id = devbox["id"]
    assert devbox["metadata"] == {"team": "a"}
    assert devbox["refs"]["image_id"] == await default_image(fake_api)

    paused = await act(fake_api, devbox_id, "pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert (await fake_backend.get_instance(devbox_id)).state is InstanceState.PAUSED
    again = await act(fake_api, devbox_id, "pause")
    assert again.status_code == 200 and again.json()["status"] == "paused"
    refused = await act(fake_api, devbox_id, "reboot")
    assert refused.status_code == 409 and "paused" in refused.json()["detail"]

    saved = await act(fake_api, devbox_id, "save", name="checkpoint")
    assert saved.status_code == 200, saved.text
    assert saved.json()["status"] == "ready" and saved.json()["instance_id"] == devbox_id

    resumed = await act(fake_api, devbox_id, "resume")
    assert resumed.json()["status"] == "ready"
    assert (await act(fake_api, devbox_id, "resume")).json()["status"] == "ready"

    rebooting = await act(fake_api, devbox_id, "reboot")
    assert rebooting.status_code == 200 and rebooting.json()["status"] == "rebooting"
    await wait_status(fake_api, fake_api.admin_key, devbox_id)

    body = (
        await fake_api.client.get(
            f"/api/devboxes/{devbox_id}/summary", headers=fake_api.auth(fake_api.admin_key)
        )
    ).json()
    assert body["timeline_count"] == 5
    assert (body["saves_count"], body["branches_count"]) == (1, 0)
    assert body["current_save_id"] == saved.json()["id"]
    assert body["last_event"]["type"] == "reboot"
    full = (
        await fake_api.client.get(
            f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
        )
    ).json()
    assert [e["type"] for e in full["timeline"]] == ["create", "pause", "save", "resume", "reboot"]
    assert full["timeline"][2]["snapshot_id"] == saved.json()["id"]


async def test_branch_boots_children_from_one_checkpoint(fake_api: Api) -> None:
    parent = await new_devbox(fake_api, name="parent", metadata={"k": "v"})
    for bad in (0, 17):
        refused = await act(fake_api, parent["id"], "branch", count=bad)
        assert refused.status_code == 422 and "count" in str(refused.json()["detail"])
    answer = await act(fake_api, parent["id"], "branch", name="fan", count=3)
    assert answer.status_code == 200, answer.text
    children = answer.json()["instances"]
    assert len(children) == 3 and len({c["id"] for c in children}) == 3
    checkpoint = {c["base_snapshot_id"] for c in children}
    assert len(checkpoint) == 1
    for child in children:
        ready = await wait_status(fake_api, fake_api.admin_key, child["id"])
        assert ready["metadata"] == {"k": "v"}
        assert ready["timeline"][0]["name"] == f"branched from {parent['id']}"
    summary = (
        await fake_api.client.get(
            f"/api/devboxes/{parent['id']}/summary", headers=fake_api.auth(fake_api.admin_key)
        )
    ).json()
    assert summary["branches_count"] == 3
    branch_events = summary["last_event"]
    assert branch_events["branch_name"] == "fan"
    assert branch_events["snapshot_id"] in checkpoint
    snapshots = (
        await fake_api.client.get("/api/snapshots", headers=fake_api.auth(fake_api.admin_key))
    ).json()["data"]
    assert checkpoint <= {s["id"] for s in snapshots}


async def test_org_members_share_outsiders_get_404(fake_api: Api) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    member = await fake_api.new_user("member1", org="default", role=Role.MEMBER)
    outsider = await fake_api.new_user("outsider1")
    listed = (await fake_api.client.get("/api/devboxes", headers=fake_api.auth(member))).json()
    assert devbox_id in [d["id"] for d in listed["data"]]
    assert (
        await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=fake_api.auth(member))
    ).status_code == 200
    denied = await fake_api.client.delete(
        f"/api/devboxes/{devbox_id}", headers=fake_api.auth(member)
    )
    assert denied.status_code == 403
    creds = await fake_api.client.get(
        f"/api/admin/devboxes/{devbox_id}/ssh-credentials", headers=fake_api.auth(member)
    )
    assert creds.status_code == 403
    for path in (f"/api/devboxes/{devbox_id}", f"/api/devboxes/{devbox_id}/summary"):
        assert (await fake_api.client.get(path, headers=fake_api.auth(outsider))).status_code == 404
    assert (await act(fake_api, devbox_id, "pause", outsider)).status_code == 404
    empty = await fake_api.client.get("/api/devboxes", headers=fake_api.auth(outsider))
    assert empty.json()["data"] == []


async def test_snapshots_belong_to_their_org(fake_api: Api) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    snapshot_id = (await act(fake_api, devbox_id, "save", name="mine")).json()["id"]
    member = await fake_api.new_user("member2", org="default", role=Role.MEMBER)
    outsider = await fake_api.new_user("outsider2")

    hidden = await fake_api.client.get(
        f"/api/snapshots/{snapshot_id}", headers=fake_api.auth(outsider)
    )
    assert hidden.status_code == 404
    foreign_boot = await fake_api.client.post(
        "/api/devboxes", params={"snapshot_id": snapshot_id}, headers=fake_api.auth(outsider)
    )
    assert foreign_boot.status_code == 404
    not_theirs = await fake_api.client.delete(
        f"/api/snapshots/{snapshot_id}", headers=fake_api.auth(member)
    )
    assert not_theirs.status_code == 403

    seen = await fake_api.client.get(f"/api/snapshots/{snapshot_id}", headers=fake_api.auth(member))
    assert seen.status_code == 200  # a member sees the org's snapshots...
    members_boot = await fake_api.client.post(
        "/api/devboxes", params={"snapshot_id": snapshot_id}, headers=fake_api.auth(member)
    )
    assert members_boot.status_code == 403  # ...but does not boot the owner's memory
    assert "owner" in members_boot.json()["detail"]

    owner = fake_api.auth(fake_api.admin_key)
    booted = await fake_api.client.post(
        "/api/devboxes", params={"snapshot_id": snapshot_id}, headers=owner
    )
    assert booted.status_code == 200 and booted.json()["refs"]["snapshot_id"] == snapshot_id
    await wait_status(fake_api, fake_api.admin_key, booted.json()["id"])
    deleted = await fake_api.client.delete(f"/api/snapshots/{snapshot_id}", headers=owner)
    assert deleted.status_code == 200
    still = await fake_api.client.get(f"/api/devboxes/{booted.json()['id']}", headers=owner)
    assert still.json()["status"] == "ready"


async def test_bad_inputs_get_clear_4xx(fake_api: Api) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    auth = fake_api.auth(fake_api.admin_key)
    unknown = await fake_api.client.post(
        "/api/devboxes", params={"snapshot_id": "snapshot_nope"}, json={}, headers=auth
    )
    assert unknown.status_code == 404 and "snapshot_nope" in unknown.json()["detail"]
    missing = await fake_api.client.post("/api/devboxes", json={}, headers=auth)
    assert missing.status_code in (400, 422) and "snapshot_id" in missing.text
    assert (await act(fake_api, "devbox_nope", "pause")).status_code == 404
    malformed = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/save",
        content=b"{not json",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    unknown_field = await act(fake_api, devbox_id, "save", name="x", colour="red")
    assert unknown_field.status_code == 422 and "colour" in str(unknown_field.json()["detail"])
    wrong_type = await act(fake_api, devbox_id, "branch", count="many")
    assert wrong_type.status_code == 422 and "count" in str(wrong_type.json()["detail"])
    too_big = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/metadata",
        json={"blob": "x" * (2 * 1024 * 1024)},
        headers=auth,
    )
    assert too_big.status_code == 413
    for params, needle in [({"dest_dir": "/tmp/../etc"}, ".."), ({"dest_dir": "/etc"}, "/tmp")]:
        refused = await fake_api.client.post(
            f"/api/devboxes/{devbox_id}/uploads",
            params=params,
            files={"file": ("x.txt", b"hi", "text/plain")},
            headers=auth,
        )
        assert refused.status_code == 400 and needle in refused.json()["detail"]
    not_image = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/uploads/image",
        files={"file": ("pic.png", b"plain text", "image/png")},
        headers=auth,
    )
    assert not_image.status_code == 400 and "image" in not_image.json()["detail"]


async def test_a_failed_boot_ends_in_error_and_leaves_no_vm(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    fake_backend.fail_next("branch", BackendTimeout("restore took too long"))
    created = await fake_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": await default_image(fake_api)},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert created.status_code == 200 and created.json()["status"] == "provisioning"
    devbox_id = created.json()["id"]
    await wait_status(fake_api, fake_api.admin_key, devbox_id, "error")
    assert devbox_id not in {i.id for i in await fake_backend.list_instances()}
    refused = await act(fake_api, devbox_id, "pause")
    assert refused.status_code == 409 and "error" in refused.json()["detail"]
    assert (
        await fake_api.client.delete(
            f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
        )
    ).status_code == 200


async def test_backend_failures_keep_the_record_and_say_what_failed(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    fake_backend.fail_next(
        "pause", CommandFailed("qemu refused", command=["qmp", "stop"], exit_code=1, output="")
    )
    failed = await act(fake_api, devbox_id, "pause")
    assert failed.status_code == 500 and "qemu refused" in failed.json()["detail"]
    after = await fake_api.client.get(
        f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
    )
    assert after.json()["status"] == "ready"
    fake_backend.fail_next("save", BackendTimeout("save took too long"))
    assert (await act(fake_api, devbox_id, "save")).status_code == 500
    snapshots = await fake_api.client.get(
        "/api/snapshots", headers=fake_api.auth(fake_api.admin_key)
    )
    assert snapshots.json()["data"] == [], "a failed save must leave no snapshot record"


async def test_delete_during_provisioning_leaves_nothing(
    fake_api: Api, fake_backend: MemoryBackend
) -> None:
    fake_backend.delay = 0.5
    created = await fake_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": await default_image(fake_api)},
        headers=fake_api.auth(fake_api.admin_key),
    )
    devbox_id = created.json()["id"]
    deleted = await fake_api.client.delete(
        f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
    )
    assert deleted.status_code == 200
    gone = await fake_api.client.get(
        f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
    )
    assert gone.status_code == 404
    assert await fake_backend.list_instances() == []


async def test_metadata_has_a_total_cap_and_unknown_ids_leave_no_trace(fake_api: Api) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    auth = fake_api.auth(fake_api.admin_key)
    for n in range(3):
        added = await fake_api.client.post(
            f"/api/devboxes/{devbox_id}/metadata", json={f"k{n}": "x" * 30_000}, headers=auth
        )
        assert added.status_code == (200 if n < 2 else 413), added.text
    assert "limit" in added.json()["detail"]
    shown = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=auth)
    assert set(shown.json()["metadata"]) == {"k0", "k1"}

    locks = fake_api.services.devbox_core._locks  # the lock table stays small
    before = len(locks)
    for n in range(50):
        assert (await act(fake_api, f"devbox_unknown{n}", "pause")).status_code == 404
        assert (await act(fake_api, f"devbox_unknown{n}", "save")).status_code == 404
    assert len(locks) == before


async def test_a_member_who_leaves_loses_every_credential(fake_api: Api) -> None:
    member = await fake_api.new_user("leaver", org="default", role=Role.MEMBER)
    created = await fake_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": await default_image(fake_api)},
        headers=fake_api.auth(member),
    )
    devbox_id = (await wait_status(fake_api, member, created.json()["id"]))["id"]
    minted = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=fake_api.auth(member)
    )
    agent = minted.json()["token"]
    credentials = (
        await fake_api.client.get(
            f"/api/admin/devboxes/{devbox_id}/ssh-credentials", headers=fake_api.auth(member)
        )
    ).json()
    gateway = fake_api.services.guest_access
    login = (credentials["access_token"], credentials["password"])
    assert await gateway.authenticate(*login) == devbox_id

    await fake_api.services.identities.remove_member("default", "leaver")
    for key in (member, agent):
        refused = await fake_api.client.get(
            f"/api/devboxes/{devbox_id}", headers=fake_api.auth(key)
        )
        assert refused.status_code == 401, refused.text
    assert await gateway.authenticate(*login) is None
    still = await fake_api.client.get(
        f"/api/devboxes/{devbox_id}", headers=fake_api.auth(fake_api.admin_key)
    )
    assert still.status_code == 200, "the devbox stays with the org"


async def test_a_delete_whose_token_revocation_fails_says_so_and_can_be_retried(
    fake_api: Api, fake_backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    devbox_id = (await new_devbox(fake_api))["id"]
    auth = fake_api.auth(fake_api.admin_key)
    minted = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=auth
    )
    agent = minted.json()["token"]
    store = fake_api.services.identities.agent_tokens
    revoke_all = store.revoke_all

    async def broken(devbox_id: str) -> None:
        raise RuntimeError("the store is locked")

    monkeypatch.setattr(store, "revoke_all", broken)
    failed = await fake_api.client.delete(f"/api/devboxes/{devbox_id}", headers=auth)
    assert failed.status_code == 500 and "not deleted" in failed.json()["detail"]
    shown = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=auth)
    assert shown.json()["status"] == "deleting"
    assert devbox_id in {i.id for i in await fake_backend.list_instances()}
    monkeypatch.setattr(store, "revoke_all", revoke_all)
    assert (
        await fake_api.client.delete(f"/api/devboxes/{devbox_id}", headers=auth)
    ).status_code == 200
    refused = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=fake_api.auth(agent))
    assert refused.status_code == 401


@pytest.mark.parametrize("name", ["default", "morphvm-minimal"])
async def test_the_default_image_answers_to_its_names_wherever_an_id_is_taken(
    fake_api: Api, name: str
) -> None:
    image = await default_image(fake_api)
    devbox = await create_devbox(fake_api, name)
    assert devbox["refs"]["image_id"] == image
    template = await fake_api.client.post(
        "/api/templates",
        json={
            "name": "on-default",
            "yaml": "name: d\nsteps:\n  - run: echo\n",
            "baseSnapshotOption": name,
        },
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert template.status_code == 201, template.text
    other = await fake_api.client.post(
        "/api/devboxes",
        params={"snapshot_id": "defaults"},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert other.status_code == 404 and "defaults" in other.text  # only the exact names
