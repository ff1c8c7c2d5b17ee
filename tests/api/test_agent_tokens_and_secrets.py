"""Agent tokens, user secrets and notifications through HTTP, on a real SQLite file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import Api, insert_devbox

from devbox_service.auth.models import Role

SECRET_VALUE = "s3cr3t-value-that-must-never-leak-7f1e"


async def owner_devbox(api: Api) -> str:
    admin = await api.services.identities.authenticate(api.admin_key)
    return await insert_devbox(api, admin.user_id, admin.org_id)


async def test_minting_defaults_unknown_scope_and_ownership(api: Api) -> None:
    devbox_id = await owner_devbox(api)
    owner = api.auth(api.admin_key)
    minted = await api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token",
        json={"purpose": "codex", "ttl_seconds": 60},
        headers=owner,
    )
    assert minted.status_code == 200, minted.text
    body = minted.json()
    assert body["token"].startswith("dbxat_") and body["expires_at"] is None
    assert sorted(body["scopes"]) == sorted(
        [
            "devbox:summary:read",
            "devbox:http:write",
            "devbox:snapshot:write",
            "devbox:secrets:read",
            "devbox:secrets:write",
        ]
    )
    assert body["devbox_id"] == devbox_id and body["purpose"] == "codex"

    unknown = await api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token",
        json={"scopes": ["devbox:everything"]},
        headers=owner,
    )
    assert unknown.status_code == 422 and "scopes" in str(unknown.json()["detail"])

    member = await api.new_user("tok-member", org="default", role=Role.ADMIN)
    refused = await api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=api.auth(member)
    )
    assert refused.status_code == 403
    outsider = await api.new_user("tok-outsider")
    hidden = await api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=api.auth(outsider)
    )
    assert hidden.status_code == 404


async def test_scope_refusals_say_why_and_are_audited(api: Api) -> None:
    devbox_id = await owner_devbox(api)
    other_id = await owner_devbox(api)
    owner = api.auth(api.admin_key)
    token = (
        await api.client.post(
            f"/api/devboxes/{devbox_id}/agent-token",
            json={"scopes": ["devbox:summary:read"], "purpose": "p1"},
            headers=owner,
        )
    ).json()["token"]
    agent = api.auth(token)
    assert (
        await api.client.get(f"/api/devboxes/{devbox_id}/summary", headers=agent)
    ).status_code == 200
    save = await api.client.post(
        f"/api/devboxes/{devbox_id}/save", json={"name": "n"}, headers=agent
    )
    assert save.status_code == 403
    assert (
        save.json()["detail"] == "Insufficient scope: this route requires 'devbox:snapshot:write'"
    )
    other = await api.client.get(f"/api/devboxes/{other_id}/summary", headers=agent)
    assert (
        other.status_code == 403
        and other.json()["detail"] == "Token is scoped to a different devbox"
    )
    delete = await api.client.delete(f"/api/devboxes/{devbox_id}", headers=agent)
    assert delete.status_code == 403

    audit = (
        await api.client.get("/api/audit", params={"devbox_id": devbox_id}, headers=owner)
    ).json()
    decisions = [(e["method"], e["route"], e["allowed"]) for e in audit["data"]]
    assert ("GET", "/api/devboxes/{devbox_id}/summary", True) in decisions
    assert ("POST", "/api/devboxes/{devbox_id}/save", False) in decisions
    assert all(e["purpose"] == "p1" for e in audit["data"])


async def test_list_and_revoke_tokens_and_revoke_all_on_delete(api: Api) -> None:
    devbox_id = await owner_devbox(api)
    owner = api.auth(api.admin_key)
    first = (
        await api.client.post(f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=owner)
    ).json()
    second = (
        await api.client.post(f"/api/devboxes/{devbox_id}/agent-token", json={}, headers=owner)
    ).json()
    listed = (await api.client.get(f"/api/devboxes/{devbox_id}/agent-tokens", headers=owner)).json()
    assert {t["id"] for t in listed["data"]} == {first["id"], second["id"]}
    assert first["token"] not in str(listed)
    revoked = await api.client.delete(
        f"/api/devboxes/{devbox_id}/agent-tokens/{first['id']}", headers=owner
    )
    assert revoked.status_code == 200
    gone = await api.client.get(
        f"/api/devboxes/{devbox_id}/summary", headers=api.auth(first["token"])
    )
    assert gone.status_code == 401
    live = await api.client.get(
        f"/api/devboxes/{devbox_id}/summary", headers=api.auth(second["token"])
    )
    assert live.status_code == 200
    used = (await api.client.get(f"/api/devboxes/{devbox_id}/agent-tokens", headers=owner)).json()
    last_used = {t["id"]: t["last_used_at"] for t in used["data"]}
    assert last_used[second["id"]] is not None and last_used[first["id"]] is None
    assert (await api.client.delete(f"/api/devboxes/{devbox_id}", headers=owner)).status_code == 200
    after = await api.client.get(
        f"/api/devboxes/{devbox_id}/summary", headers=api.auth(second["token"])
    )
    assert after.status_code == 401


async def test_secrets_sealed_scoped_and_never_leaked(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    owner = api.auth(api.admin_key)
    put = await api.client.put(
        "/api/user-secrets/OPENAI_API_KEY",
        json={"value": SECRET_VALUE, "metadata": {"kind": "api"}},
        headers=owner,
    )
    assert put.status_code == 200 and SECRET_VALUE not in put.text
    await api.client.put("/api/user-secrets/OTHER", json={"value": "other"}, headers=owner)
    listed = await api.client.get("/api/user-secrets", headers=owner)
    assert [s["name"] for s in listed.json()["data"]] == ["OPENAI_API_KEY", "OTHER"]
    assert SECRET_VALUE not in listed.text
    read = await api.client.get("/api/user-secrets/OPENAI_API_KEY", headers=owner)
    assert read.json() == {"name": "OPENAI_API_KEY", "value": SECRET_VALUE}
    bad_name = await api.client.put(
        "/api/user-secrets/bad-name!", json={"value": "x"}, headers=owner
    )
    assert bad_name.status_code in (400, 422)

    devbox_id = await owner_devbox(api)
    limited = (
        await api.client.post(
            f"/api/devboxes/{devbox_id}/agent-token",
            json={"scopes": ["devbox:secrets:read"], "secret_names": ["OPENAI_API_KEY"]},
            headers=owner,
        )
    ).json()
    agent = api.auth(limited["token"])
    assert (
        await api.client.get("/api/user-secrets/OPENAI_API_KEY", headers=agent)
    ).status_code == 200
    assert (await api.client.get("/api/user-secrets/OTHER", headers=agent)).status_code == 403
    visible = (await api.client.get("/api/user-secrets", headers=agent)).json()["data"]
    assert [s["name"] for s in visible] == ["OPENAI_API_KEY"]
    write = await api.client.put(
        "/api/user-secrets/OPENAI_API_KEY", json={"value": "x"}, headers=agent
    )
    assert write.status_code == 403

    await api.services.database.execute("DELETE FROM agent_sessions")
    lost = await api.client.get("/api/user-secrets/OPENAI_API_KEY", headers=agent)
    assert lost.status_code == 401
    assert lost.json()["detail"] == "Agent token session not found (mint a new agent token)"

    raw = b"".join(p.read_bytes() for p in Path(api.settings.data_dir).glob("devbox.sqlite3*"))
    assert SECRET_VALUE.encode() not in raw
    assert SECRET_VALUE not in caplog.text
    assert (await api.client.delete("/api/user-secrets/OTHER", headers=owner)).status_code == 200
    assert (await api.client.get("/api/user-secrets/OTHER", headers=owner)).status_code == 404


async def test_notifications_from_an_agent_reach_the_owner_unread_first(api: Api) -> None:
    devbox_id = await owner_devbox(api)
    owner = api.auth(api.admin_key)
    token = (
        await api.client.post(
            f"/api/devboxes/{devbox_id}/agent-token",
            json={"scopes": ["devbox:notifications:write"]},
            headers=owner,
        )
    ).json()["token"]
    posted = await api.client.post(
        f"/api/devboxes/{devbox_id}/notifications",
        json={"title": "tests pass", "level": "success"},
        headers=api.auth(token),
    )
    assert posted.status_code == 200, posted.text
    second = await api.client.post(
        f"/api/devboxes/{devbox_id}/notifications",
        json={"title": "needs input", "body": "which branch?"},
        headers=owner,
    )
    bad_level = await api.client.post(
        f"/api/devboxes/{devbox_id}/notifications",
        json={"title": "x", "level": "shouting"},
        headers=owner,
    )
    assert bad_level.status_code == 422
    read = await api.client.post(f"/api/notifications/{posted.json()['id']}/read", headers=owner)
    assert read.json()["read_at"] is not None
    listed = (await api.client.get("/api/notifications", headers=owner)).json()["data"]
    assert [n["id"] for n in listed] == [second.json()["id"], posted.json()["id"]]
