"""Exposing HTTP services: the request rules, on the in-memory VM backend (the proxying of
real guest servers is in tests/vm/test_http_services.py)."""

from __future__ import annotations

from typing import Any

import httpx
from support import Api, create_devbox, mint_agent_token


async def expose(api: Api, key: str, devbox_id: str, **body: Any) -> httpx.Response:
    return await api.client.post(
        f"/api/devboxes/{devbox_id}/http", json=body, headers=api.auth(key)
    )


async def default_devbox(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    image_id = next(i["id"] for i in images["data"] if i["default"])
    return str((await create_devbox(api, image_id))["id"])


async def test_bad_requests_name_the_field(fake_api: Api) -> None:
    key, devbox_id = fake_api.admin_key, await default_devbox(fake_api)
    for body, field in [
        ({"name": "Bad Name", "port": 8080}, "name"),
        ({"name": "-web", "port": 8080}, "name"),
        ({"name": "w" * 41, "port": 8080}, "name"),
        ({"name": "web", "port": 0}, "port"),
        ({"name": "web", "port": 70000}, "port"),
        ({"name": "web", "port": 8080, "auth_mode": "basic"}, "auth_mode"),
    ]:
        refused = await expose(fake_api, key, devbox_id, **body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["body", field], refused.text
    newline = await expose(fake_api, key, devbox_id, name="web\n", port=8080)
    assert newline.status_code == 400 and "name" in newline.json()["detail"]
    bad_delete = await fake_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/Bad_Name", headers=fake_api.auth(key)
    )
    assert bad_delete.status_code == 400 and "name" in bad_delete.json()["detail"]


async def test_exposed_services_are_listed_replaced_and_removed(fake_api: Api) -> None:
    key, devbox_id = fake_api.admin_key, await default_devbox(fake_api)
    exposed = await expose(fake_api, key, devbox_id, name="web", port=8080, auth_mode="api_key")
    assert exposed.status_code == 200, exposed.text
    (listed,) = exposed.json()["networking"]["http_services"]
    assert listed == {
        "name": "web",
        "port": 8080,
        "url": f"http://web-{devbox_id}.localhost:8000/",
        "auth_mode": "api_key",
    }
    on_dashboard = await fake_api.client.get(
        f"/preview/{devbox_id}/web/x?q=1", headers=fake_api.auth(key), follow_redirects=False
    )
    # never served on the dashboard's origin: sent to the service's own, method kept
    assert on_dashboard.status_code == 307
    assert on_dashboard.headers["location"] == f"http://web-{devbox_id}.localhost:8000/x?q=1"
    own = f"http://web-{devbox_id}.localhost/"
    unauthenticated = await fake_api.client.get(own)
    assert unauthenticated.status_code == 401
    outsider = await fake_api.new_user("outsider-http")
    hidden = await fake_api.client.get(own, headers=fake_api.auth(outsider))
    assert hidden.status_code == 404
    crafted = await fake_api.client.get(
        f"/preview/{devbox_id}/a@evil.example/", follow_redirects=False
    )
    assert crafted.status_code == 400  # a name no service has never makes another host

    replaced = await expose(fake_api, key, devbox_id, name="web", port=9090)
    (listed,) = replaced.json()["networking"]["http_services"]
    assert (listed["port"], listed["auth_mode"]) == (9090, "none")

    paused = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/pause", headers=fake_api.auth(key)
    )
    assert paused.json()["status"] == "paused"
    refused = await expose(fake_api, key, devbox_id, name="other", port=7070)
    assert refused.status_code == 409 and "paused" in refused.json()["detail"]

    forwarded = (await fake_api.services.devbox_core.backend.get_instance(devbox_id)).exposed_ports
    assert 9090 in forwarded
    removed = await fake_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/web", headers=fake_api.auth(key)
    )
    assert removed.status_code == 200 and removed.json()["networking"]["http_services"] == []
    instance = await fake_api.services.devbox_core.backend.get_instance(devbox_id)
    assert 9090 not in instance.exposed_ports, "unexposing closes the port forward"
    again = await fake_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/web", headers=fake_api.auth(key)
    )
    assert again.status_code == 404


async def test_an_agent_token_cannot_make_a_protected_service_public(fake_api: Api) -> None:
    key, devbox_id = fake_api.admin_key, await default_devbox(fake_api)
    admin = await fake_api.services.identities.authenticate(key)
    agent = await mint_agent_token(
        fake_api, admin.user_id, admin.org_id, devbox_id, ["devbox:http:write"]
    )
    await expose(fake_api, key, devbox_id, name="web", port=8080, auth_mode="api_key")
    refused = await expose(fake_api, agent, devbox_id, name="web", port=8080)
    assert refused.status_code == 403 and "api_key" in refused.json()["detail"]
    shown = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=fake_api.auth(key))
    assert shown.json()["networking"]["http_services"][0]["auth_mode"] == "api_key"
    own = await expose(fake_api, agent, devbox_id, name="agent-web", port=9090)
    assert own.status_code == 200, own.text


async def test_a_port_nothing_answers_on_is_a_502_naming_it(fake_api: Api) -> None:
    """The in-memory backend forwards to a host port nobody listens on: the proxy's failure
    comes back as the domain's Unreachable, in the error table's shape."""
    key, devbox_id = fake_api.admin_key, await default_devbox(fake_api)
    exposed = await expose(fake_api, key, devbox_id, name="silent", port=8099)
    assert exposed.status_code == 200, exposed.text
    answer = await fake_api.client.get(f"http://silent-{devbox_id}.localhost/page")
    assert answer.status_code == 502, answer.text
    detail = answer.json()["detail"]
    assert f"nothing answered HTTP on port 8099 of devbox {devbox_id} (service 'silent')" in detail


async def test_a_visitor_without_a_key_cannot_tell_which_keyed_services_exist(
    fake_api: Api,
) -> None:
    """A keyed service and a name no service has answer alike: 401 without a valid key,
    404 for a key that may not see it (no existence oracle for anonymous visitors)."""
    key, devbox_id = fake_api.admin_key, await default_devbox(fake_api)
    await expose(fake_api, key, devbox_id, name="secret-app", port=8080, auth_mode="api_key")
    keyed, missing = (f"http://{n}-{devbox_id}.localhost/" for n in ("secret-app", "nothing"))
    no_devbox = "http://web-devbox_000000000000000000000000.localhost/"
    for url in (keyed, missing, no_devbox):
        anonymous = await fake_api.client.get(url)
        assert anonymous.status_code == 401, (url, anonymous.text)
        wrong = await fake_api.client.get(url, headers={"Authorization": "Bearer not-a-key"})
        assert wrong.status_code == 401, (url, wrong.text)
    outsider = await fake_api.new_user("outsider-oracle")
    for url in (keyed, missing, no_devbox):
        hidden = await fake_api.client.get(url, headers=fake_api.auth(outsider))
        assert hidden.status_code == 404, (url, hidden.text)
    assert (await fake_api.client.get(missing, headers=fake_api.auth(key))).status_code == 404
