"""Exposed HTTP services end to end: a real web server in a real guest, reached through the
preview URL the DevboxResponse lists (requested through the in-process test client)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from support import Api, create_devbox, guest, mint_agent_token

pytestmark = pytest.mark.vm

PAGE = "preview-ok\n"


async def serve(api: Api, devbox_id: str, port: int) -> None:
    """Start `python3 -m http.server` in the guest on a directory with a known file."""
    await guest(
        api,
        devbox_id,
        f"mkdir -p /tmp/www && printf '{PAGE}' > /tmp/www/file && cd /tmp/www && "
        f"(nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &)",
    )
    deadline = time.monotonic() + 30
    while await guest(api, devbox_id, f"curl -s http://127.0.0.1:{port}/file || true") != PAGE:
        assert time.monotonic() < deadline, "the guest's web server never answered"
        await asyncio.sleep(0.3)


async def expose(api: Api, key: str, devbox_id: str, **body: Any) -> httpx.Response:
    return await api.client.post(
        f"/api/devboxes/{devbox_id}/http", json=body, headers=api.auth(key)
    )


def service(devbox: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = [s for s in devbox["networking"]["http_services"] if s["name"] == name]
    return found[0] if found else None


def path_of(url: str) -> str:
    """The request target for the in-process client: the whole URL, so its host (the
    service's own origin) is what routes it."""
    return url


async def test_an_exposed_port_is_listed_and_served_until_unexposed(
    vm_api: Api, devbox: dict[str, Any]
) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    await serve(vm_api, devbox_id, 8080)
    # what the morphcloud CLI sends when no auth mode is given
    exposed = await expose(vm_api, key, devbox_id, name="web", port=8080, auth_mode=None)
    assert exposed.status_code == 200, exposed.text
    own = f"http://web-{devbox_id}.localhost:{vm_api.settings.port}/"
    url = own  # served on its own origin only
    listed = {"name": "web", "port": 8080, "url": own, "auth_mode": "none"}
    assert service(exposed.json(), "web") == listed
    summary = await vm_api.client.get(
        f"/api/devboxes/{devbox_id}/summary", headers=vm_api.auth(key)
    )
    assert service(summary.json(), "web") == listed

    page = await vm_api.client.get(path_of(url) + "file?x=1")  # no key: the service is public
    assert page.status_code == 200, page.text
    assert page.text == PAGE
    on_own_origin = await vm_api.client.get("/file", headers={"host": urlsplit(own).netloc})
    assert on_own_origin.status_code == 200 and on_own_origin.text == PAGE
    head = await vm_api.client.head(path_of(url) + "file")
    assert head.status_code == 200 and head.content == b""
    listing = await vm_api.client.get(path_of(url))
    assert listing.status_code == 200 and 'href="file"' in listing.text
    assert listing.headers["content-type"] == "text/html; charset=utf-8"  # the guest's header
    bare = await vm_api.client.get(f"/preview/{devbox_id}/web?a=b", follow_redirects=False)
    assert bare.status_code == 307  # the dashboard's origin never serves it
    assert bare.status_code in (302, 307)
    assert bare.headers["location"] == own + "?a=b"
    posted = await vm_api.client.post(path_of(url) + "file", content=b"body")
    assert posted.status_code == 501  # http.server has no POST: the guest's answer
    missing = await vm_api.client.get(path_of(url) + "no-such-file")
    assert missing.status_code == 404  # the guest's own answer, passed through

    again = await expose(vm_api, key, devbox_id, name="web", port=8080, auth_mode="api_key")
    assert service(again.json(), "web") == {**listed, "auth_mode": "api_key"}
    assert len(again.json()["networking"]["http_services"]) == 1

    nowhere = f"http://nothing-here-{devbox_id}.localhost/file"
    anonymous = await vm_api.client.get(nowhere)
    assert anonymous.status_code == 401, "as a keyed service would: nothing says what exists"
    unknown = await vm_api.client.get(nowhere, headers=vm_api.auth(key))
    assert unknown.status_code == 404 and "nothing-here" in unknown.json()["detail"]

    instance = await vm_api.services.devbox_core.backend.get_instance(devbox_id)
    host_port = instance.exposed_ports[8080]
    removed = await vm_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/web", headers=vm_api.auth(key)
    )
    assert removed.status_code == 200, removed.text
    with pytest.raises(OSError):  # the host's forward to the guest port is gone
        socket.create_connection(("127.0.0.1", host_port), timeout=5).close()
    assert service(removed.json(), "web") is None
    gone = await vm_api.client.get(url + "file", headers=vm_api.auth(key))
    assert gone.status_code == 404, gone.text
    assert (await vm_api.client.get(url + "file")).status_code == 401, "as any unknown name"
    twice = await vm_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/web", headers=vm_api.auth(key)
    )
    assert twice.status_code == 404


async def test_api_key_services_need_a_key_that_may_see_the_devbox(
    vm_api: Api, devbox: dict[str, Any]
) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    await serve(vm_api, devbox_id, 8081)
    exposed = await expose(vm_api, key, devbox_id, name="private", port=8081, auth_mode="api_key")
    assert exposed.status_code == 200, exposed.text
    found = service(exposed.json(), "private")
    assert found is not None and found["auth_mode"] == "api_key"
    path = f"http://private-{devbox_id}.localhost/file"

    anonymous = await vm_api.client.get(path)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert (await vm_api.client.get(path, headers=vm_api.auth("wrong"))).status_code == 401
    owner = await vm_api.client.get(path, headers=vm_api.auth(key))
    assert owner.status_code == 200 and owner.text == PAGE
    outsider_key = await vm_api.new_user("preview-outsider")
    outsider = await vm_api.client.get(path, headers=vm_api.auth(outsider_key))
    assert outsider.status_code == 404

    admin = await vm_api.services.identities.authenticate(key)
    own_agent = await mint_agent_token(
        vm_api, admin.user_id, admin.org_id, devbox_id, ["devbox:summary:read"]
    )
    agent_get = await vm_api.client.get(path, headers=vm_api.auth(own_agent))
    assert agent_get.status_code == 200
    other_agent = await mint_agent_token(
        vm_api, admin.user_id, admin.org_id, "devbox_elsewhere", ["devbox:summary:read"]
    )
    assert (await vm_api.client.get(path, headers=vm_api.auth(other_agent))).status_code == 404


async def test_a_service_exposed_with_an_agent_token_is_public(
    vm_api: Api, devbox: dict[str, Any]
) -> None:
    devbox_id = devbox["id"]
    admin = await vm_api.services.identities.authenticate(vm_api.admin_key)
    token = await mint_agent_token(
        vm_api, admin.user_id, admin.org_id, devbox_id, ["devbox:http:write"]
    )
    exposed = await expose(
        vm_api, token, devbox_id, name="agent-web", port=8082, auth_mode="api_key"
    )
    assert exposed.status_code == 200, exposed.text
    found = service(exposed.json(), "agent-web")
    assert found is not None and found["auth_mode"] == "none"
    removed = await vm_api.client.delete(
        f"/api/devboxes/{devbox_id}/http/agent-web", headers=vm_api.auth(token)
    )
    assert removed.status_code == 200 and service(removed.json(), "agent-web") is None


async def test_a_port_nobody_listens_on_answers_502(vm_api: Api, devbox: dict[str, Any]) -> None:
    key, devbox_id = vm_api.admin_key, devbox["id"]
    exposed = await expose(vm_api, key, devbox_id, name="silent", port=8099)
    assert exposed.status_code == 200, exposed.text
    answer = await vm_api.client.get(f"http://silent-{devbox_id}.localhost/")
    assert answer.status_code == 502, answer.text
    assert "port 8099" in answer.json()["detail"]


async def test_a_paused_devbox_wakes_on_a_request_to_its_service(
    vm_api: Api, default_image: dict[str, Any]
) -> None:
    key = vm_api.admin_key
    devbox_id = (await create_devbox(vm_api, default_image["id"], name="wake-on-http"))["id"]
    try:
        await serve(vm_api, devbox_id, 8080)
        exposed = await expose(vm_api, key, devbox_id, name="web", port=8080)
        found = service(exposed.json(), "web")
        assert found is not None
        paused = await vm_api.client.post(
            f"/api/devboxes/{devbox_id}/pause", headers=vm_api.auth(key)
        )
        assert paused.json()["status"] == "paused"
        own_host = urlsplit(found["url"]).netloc  # the service's own origin wakes it too
        page = await vm_api.client.get("/file", headers={"host": own_host})
        assert page.status_code == 200 and page.text == PAGE
        woken = await vm_api.client.get(f"/api/devboxes/{devbox_id}", headers=vm_api.auth(key))
        assert woken.json()["status"] == "ready"
        last = woken.json()["timeline"][-1]
        assert (last["type"], last["name"]) == ("resume", "resumed by HTTP")
    finally:
        await vm_api.client.delete(f"/api/devboxes/{devbox_id}", headers=vm_api.auth(key))
