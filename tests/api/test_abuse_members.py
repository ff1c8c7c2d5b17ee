"""The attacker's review, replayed as a member of the owner's organization (and an agent
token): every finding of "members act as owners" is refused now, and the owner's devbox,
snapshot and protected port are untouched afterwards. On the in-memory VM backend; the same
rules hold on real VMs because they are decided before any VM work (the policy table)."""

from __future__ import annotations

from typing import Any

from support import Api, create_devbox, mint_agent_token

from devbox_service.auth.models import Role


async def default_image(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    return str(next(i["id"] for i in images["data"] if i["default"]))


async def setting(api: Api) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(owner's devbox, its snapshot, owner's headers, a member's headers)."""
    devbox_id = str((await create_devbox(api, await default_image(api)))["id"])
    owner = api.auth(api.admin_key)
    saved = await api.client.post(f"/api/devboxes/{devbox_id}/save", json={}, headers=owner)
    assert saved.status_code == 200, saved.text
    member = api.auth(await api.new_user("curious-member", org="default", role=Role.MEMBER))
    return devbox_id, saved.json()["id"], owner, member


async def test_a_member_cannot_act_as_the_owner_through_the_instance_api(fake_api: Api) -> None:
    devbox_id, snapshot_id, owner, member = await setting(fake_api)
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/api/instance/{devbox_id}/exec", {"json": {"command": ["cat", "/etc/shadow"]}}),
        ("POST", f"/api/instance/{devbox_id}/exec/sse", {"json": {"command": ["id"]}}),
        ("POST", f"/api/instance/{devbox_id}/ttl", {"json": {"ttl_seconds": 1}}),
        ("POST", f"/api/instance/{devbox_id}/branch", {"params": {"count": 1}}),
        ("POST", f"/api/devboxes/{devbox_id}/branch", {"json": {}}),
        ("POST", f"/api/instance/{devbox_id}/snapshot", {"json": {}}),
        ("POST", f"/api/devboxes/{devbox_id}/save", {"json": {}}),
        ("POST", f"/api/instance/{devbox_id}/pause", {}),
        ("GET", f"/api/instance/{devbox_id}/ssh/key", {}),
        ("POST", f"/api/snapshot/{snapshot_id}/ttl", {"json": {"ttl_seconds": 1}}),
        ("POST", f"/api/snapshot/{snapshot_id}/metadata", {"json": {"x": "y"}}),
        ("POST", f"/api/snapshot/{snapshot_id}/boot", {"json": {}}),
        ("DELETE", f"/api/snapshot/{snapshot_id}", {}),
    ]
    for method, path, extra in attempts:
        answer = await fake_api.client.request(method, path, headers=member, **extra)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "owner" in answer.json()["detail"], answer.text
    # what a member may do: watch and read
    assert (await fake_api.client.get(f"/api/instance/{devbox_id}", headers=member)).is_success
    assert (await fake_api.client.get(f"/api/snapshot/{snapshot_id}", headers=member)).is_success
    # nothing happened to the owner's things
    instance = (await fake_api.client.get(f"/api/instance/{devbox_id}", headers=owner)).json()
    assert instance["status"] == "ready", instance
    kept = await fake_api.client.get(f"/api/snapshot/{snapshot_id}", headers=owner)
    assert kept.status_code == 200 and kept.json()["metadata"] == {}
    listed = (await fake_api.client.get("/api/instance", headers=owner)).json()["data"]
    assert [i["id"] for i in listed] == [devbox_id]  # no branch the member owns
    record = await fake_api.services.devboxes.records(
        await fake_api.services.identities.authenticate(fake_api.admin_key)
    )
    assert [(r.id, r.ttl_seconds) for r in record] == [(devbox_id, None)]


async def test_only_the_owner_opens_a_protected_port_to_everyone(fake_api: Api) -> None:
    devbox_id, _, owner, member = await setting(fake_api)
    url = f"/api/devboxes/{devbox_id}/http"
    protected = {"name": "app", "port": 8080, "auth_mode": "api_key"}
    assert (await fake_api.client.post(url, json=protected, headers=owner)).status_code == 200
    admin = fake_api.auth(
        await fake_api.new_user("org-admin-ports", org="default", role=Role.ADMIN)
    )
    agent = fake_api.auth(
        await mint_agent_token(
            fake_api, *(await owner_ids(fake_api)), devbox_id, ["devbox:http:write"]
        )
    )
    for caller in (member, admin, agent):
        for body in ({"name": "app", "port": 8080}, {"name": "other", "port": 8080}):
            refused = await fake_api.client.post(url, json=body, headers=caller)
            assert refused.status_code == 403, (body, refused.text)
    devbox = (await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=owner)).json()
    modes = {s["name"]: s["auth_mode"] for s in devbox["networking"]["http_services"]}
    assert modes == {"app": "api_key"}
    # the owner may, and then the port has one mode under every name
    opened = await fake_api.client.post(url, json={"name": "open", "port": 8080}, headers=owner)
    assert opened.status_code == 200, opened.text
    modes = {s["name"]: s["auth_mode"] for s in opened.json()["networking"]["http_services"]}
    assert modes == {"app": "none", "open": "none"}


async def owner_ids(api: Api) -> tuple[str, str]:
    admin = await api.services.identities.authenticate(api.admin_key)
    return admin.user_id, admin.org_id
