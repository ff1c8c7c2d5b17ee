"""Reading templates parses no YAML, played as an attacker on the in-memory VM backend: an
anonymous visitor hammering a large public spec's share page (each YAML parse of it is seconds
of CPU) while another tenant creates a template. The spec is parsed once, when written, and
stored as msgspec JSON; counted, not timed."""

from __future__ import annotations

import asyncio

import pytest
from support import Api, background_settled

from devbox_service.devbox_templates import spec


async def create(api: Api, key: str, yaml: str, name: str) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    body = {"name": name, "yaml": yaml, "baseSnapshotOption": images["data"][0]["id"]}
    created = await api.client.post("/api/templates", json=body, headers=api.auth(key))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def big_spec() -> str:
    """A spec just under the 256 KiB limit: 200 steps with long commands."""
    command = "echo " + "x" * 1200
    steps = "".join(f"  - title: step {i}\n    run: {command}\n" for i in range(200))
    text = f"name: big\ndescription: a large spec\nsteps:\n{steps}"
    assert len(text.encode()) < spec.MAX_SPEC_BYTES
    return text


async def test_views_of_a_big_shared_spec_parse_no_yaml_while_another_tenant_creates(
    fake_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each YAML parse of this spec is seconds of CPU: the views must parse none, so an
    anonymous visitor hammering the page costs another tenant nothing. Counted, not timed."""
    template_id = await create(fake_api, fake_api.admin_key, big_spec(), "big")
    shared = await fake_api.client.post(
        f"/api/templates/{template_id}/share",
        json={"alias": "big-one", "visibility": "public"},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert shared.status_code == 200
    tenant = await fake_api.new_user("busy-tenant")
    parsed: list[int] = []
    real_parse = spec.parse

    def counting_parse(text: str) -> spec.TemplateSpec:
        parsed.append(len(text))
        return real_parse(text)

    monkeypatch.setattr(spec, "parse", counting_parse)

    anonymous = [fake_api.client.get("/s/big-one") for _ in range(8)]
    member_views = [
        fake_api.client.get(path, headers=fake_api.auth(fake_api.admin_key))
        for path in (
            "/api/templates",
            f"/api/templates/{template_id}",
            "/api/aliases",
            "/api/aliases/big-one",
            "/api/aliases/search?q=step&include_steps=true",
            f"/api/templates/shared/{template_id}",
        )
    ]
    tenant_create = create(fake_api, tenant, "name: mine\nsteps:\n  - run: echo mine\n", "mine")
    views, tenant_template = await asyncio.gather(
        asyncio.gather(*anonymous, *member_views), tenant_create
    )

    assert [v.status_code for v in views] == [200] * len(views)
    assert "step 199" in views[0].text
    assert tenant_template.startswith("tpl")
    assert len(parsed) == 1, f"only the tenant's create parses YAML, got {len(parsed)} parses"


async def test_a_template_stored_before_parsed_specs_is_parsed_once(
    fake_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    template_id = await create(
        fake_api, fake_api.admin_key, "name: old\nsteps:\n  - run: a\n", "old"
    )
    await background_settled(fake_api)
    await fake_api.services.database.execute(
        "UPDATE templates SET spec_json = NULL WHERE id = ?", (template_id,)
    )
    parsed: list[str] = []
    real_parse = spec.parse

    def counting_parse(text: str) -> spec.TemplateSpec:
        parsed.append(text)
        return real_parse(text)

    monkeypatch.setattr(spec, "parse", counting_parse)
    for _ in range(3):
        shown = await fake_api.client.get(
            f"/api/templates/{template_id}", headers=fake_api.auth(fake_api.admin_key)
        )
        assert shown.status_code == 200 and shown.json()["step_count"] == 1
    assert len(parsed) == 1, "the first read parses the YAML and keeps the result"
