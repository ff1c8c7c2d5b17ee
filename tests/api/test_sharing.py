"""Share links on the in-memory VM backend: aliases, who sees them, search, the shared view
and the page a short link opens; an alias is its organization's (a removed member who made
it cannot move it)."""

from __future__ import annotations

from typing import Any

from support import Api, background_settled

from devbox_service.auth.models import Role

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
    assert taken.status_code == 403 and "taken" in taken.json()["detail"]
    elsewhere = await template(fake_api, key=await fake_api.new_user("share-elsewhere"))
    other_org = await share(fake_api, elsewhere, key=None, alias="web-app")
    assert other_org.status_code == 404, "another org's template is not the caller's to name"
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


async def test_a_removed_member_cannot_re_point_the_orgs_alias(fake_api: Api) -> None:
    # she is a member of the team (and of her own org), and made the team's alias
    mallory = await fake_api.new_user("mallory")
    await background_settled(fake_api)
    await fake_api.services.identities.add_member("default", "mallory", Role.MEMBER)
    as_member = (await fake_api.services.identities.issue_key("mallory", org="default")).key
    team_template = await template(
        fake_api, "name: team\nsteps:\n  - run: echo team\n", key=as_member
    )
    made = await fake_api.client.post(
        f"/api/templates/{team_template}/share",
        json={"alias": "team-env"},
        headers=fake_api.auth(as_member),
    )
    assert made.status_code == 200, made.text
    own = await template(fake_api, "name: evil\nsteps:\n  - run: echo evil\n", key=mallory)

    # while a member, she may not move it to a template outside the org either
    outside = await fake_api.client.post(
        f"/api/templates/{own}/share",
        json={"alias": "team-env", "visibility": "public"},
        headers=fake_api.auth(mallory),
    )
    assert outside.status_code == 409, outside.text

    await background_settled(fake_api)
    await fake_api.services.identities.remove_member("default", "mallory")
    for key in (mallory, as_member):
        moved = await fake_api.client.post(
            f"/api/templates/{own}/share",
            json={"alias": "team-env", "visibility": "public"},
            headers=fake_api.auth(key),
        )
        assert moved.status_code in (401, 403, 409), moved.text
        deleted = await fake_api.client.delete("/api/aliases/team-env", headers=fake_api.auth(key))
        assert deleted.status_code in (401, 403, 404), deleted.text
    still = await fake_api.client.get(
        "/api/aliases/team-env", headers=fake_api.auth(fake_api.admin_key)
    )
    assert still.status_code == 200 and still.json()["template_id"] == team_template

    # the org's owner may move it within the org; a plain member who did not make it may not
    other = await template(fake_api, "name: next\nsteps:\n  - run: echo 2\n")
    by_owner = await fake_api.client.post(
        f"/api/templates/{other}/share",
        json={"alias": "team-env"},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert by_owner.status_code == 200, by_owner.text
    member = await fake_api.new_user("plain-member", org="default")
    refused = await fake_api.client.post(
        f"/api/templates/{team_template}/share",
        json={"alias": "team-env"},
        headers=fake_api.auth(member),
    )
    assert refused.status_code == 403 and "owner or an org admin" in refused.json()["detail"]
    assert (
        await fake_api.client.delete("/api/aliases/team-env", headers=fake_api.auth(member))
    ).status_code == 403
    removed = await fake_api.client.delete(
        "/api/aliases/team-env", headers=fake_api.auth(fake_api.admin_key)
    )
    assert removed.status_code == 204
    gone = await fake_api.client.get(
        "/api/aliases/team-env", headers=fake_api.auth(fake_api.admin_key)
    )
    assert gone.status_code == 404
