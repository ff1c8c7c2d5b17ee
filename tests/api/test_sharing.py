"""Share links on the in-memory VM backend: aliases, who sees them, search, the shared view
and the page a short link opens."""

from __future__ import annotations

from typing import Any

from support import Api

YAML = "name: web\ndescription: a web app\nsteps:\n  - title: install nginx\n    run: echo a\n"


async def template(api: Api, yaml: str = YAML, key: str | None = None) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    body = {"name": "web", "yaml": yaml, "baseSnapshotOption": images["data"][0]["id"]}
    created = await api.client.post(
        "/api/templates", json=body, headers=api.auth(key or api.admin_key)
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def share(api: Api, template_id: str, key: str | None = None, **body: Any) -> Any:
    return await api.client.post(
        f"/api/templates/{template_id}/share", json=body, headers=api.auth(key or api.admin_key)
    )


async def test_sharing_names_a_template_and_members_find_it(fake_api: Api) -> None:
    template_id = await template(fake_api)
    shared = await share(fake_api, template_id, alias="web-app", description="our web app")
    assert shared.status_code == 200, shared.text
    assert shared.json() == {"url": f"{fake_api.settings.base_url}/s/web-app"}
    member = await fake_api.new_user("share-member", org="default")
    found = await fake_api.client.get("/api/aliases/web-app", headers=fake_api.auth(member))
    assert found.status_code == 200
    body = found.json()
    assert (body["template_id"], body["template"], body["description"]) == (
        template_id,
        YAML,
        "our web app",
    )
    listed = await fake_api.client.get("/api/aliases", headers=fake_api.auth(member))
    assert [a["alias"] for a in listed.json()["data"]] == ["web-app"]
    view = await fake_api.client.get(
        f"/api/templates/shared/{template_id}", headers=fake_api.auth(member)
    )
    assert view.status_code == 200 and view.json()["name"] == "web"

    searched = await fake_api.client.get(
        "/api/aliases/search",
        params={"q": "nginx web", "match": "all", "include_steps": "true", "steps_limit": 1},
        headers=fake_api.auth(member),
    )
    (item,) = searched.json()["data"]
    assert item["alias"] == "web-app" and item["match_count"] == 2 and item["step_count"] == 1
    assert item["steps_preview"] == [{"title": "install nginx", "type": "command"}]
    none = await fake_api.client.get(
        "/api/aliases/search",
        params={"q": "nginx postgres", "match": "all"},
        headers=fake_api.auth(member),
    )
    assert none.json()["data"] == []

    other = await template(fake_api, YAML.replace("web app", "second"))
    moved = await share(fake_api, other, alias="web-app")
    assert moved.status_code == 200
    again = await fake_api.client.get("/api/aliases/web-app", headers=fake_api.auth(member))
    assert again.json()["template_id"] == other, "sharing again moves the alias"
    taken = await share(fake_api, template_id, key=member, alias="web-app")
    assert taken.status_code == 409 and "taken" in taken.json()["detail"]
    bad = await share(fake_api, template_id, alias="Not A Slug")
    assert bad.status_code == 422


async def test_org_shares_stay_in_the_org_public_ones_show_to_all(fake_api: Api) -> None:
    template_id = await template(fake_api)
    await share(fake_api, template_id, alias="inside")
    outsider = await fake_api.new_user("share-outsider")
    for path in ("/api/aliases/inside", f"/api/templates/shared/{template_id}"):
        hidden = await fake_api.client.get(path, headers=fake_api.auth(outsider))
        assert hidden.status_code == 404, path
    visitor = await fake_api.client.get("/s/inside", follow_redirects=False)
    assert visitor.status_code == 303 and visitor.headers["location"] == "/sign-in?next=/s/inside"
    assert (await fake_api.client.get("/api/aliases", headers=fake_api.auth(outsider))).json()[
        "data"
    ] == []

    await share(fake_api, template_id, alias="everyone", visibility="public")
    seen = await fake_api.client.get("/api/aliases/everyone", headers=fake_api.auth(outsider))
    assert seen.status_code == 200
    view = await fake_api.client.get(
        f"/api/templates/shared/{template_id}", headers=fake_api.auth(outsider)
    )
    assert view.status_code == 200
    page = await fake_api.client.get("/s/everyone")
    assert page.status_code == 200 and "install nginx" in page.text
    assert "morphcloud devbox template run everyone" in page.text
    still_private = await fake_api.client.get(
        f"/api/templates/{template_id}", headers=fake_api.auth(outsider)
    )
    assert still_private.status_code == 404, "a public share shows the template, nothing more"
    unavailable = await fake_api.client.get(
        f"/api/templates/{template_id}/instant-devbox/availability",
        headers=fake_api.auth(outsider),
    )
    assert unavailable.json()["reason"] == "forbidden"

    await fake_api.client.delete(
        f"/api/templates/{template_id}", headers=fake_api.auth(fake_api.admin_key)
    )
    gone = await fake_api.client.get("/api/aliases/everyone", headers=fake_api.auth(outsider))
    assert gone.status_code == 404, "deleting a template removes its aliases"
