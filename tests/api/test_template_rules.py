"""Template rules on the in-memory VM backend: what a spec may say (and how a bad one is
answered), who sees a template, and what the routes answer before any build. Builds on real
VMs are in tests/vm/test_templates.py."""

from __future__ import annotations

from typing import Any

import pytest
from support import Api

from devbox_service.devbox_templates.spec import MAX_DEPTH, MAX_SPEC_BYTES

GOOD = "name: ok\nsteps:\n  - run: echo hi\n  - type: exportSecret\n    name: TOKEN\n"


async def image_id(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    return str(images["data"][0]["id"])


async def create(api: Api, yaml: str, key: str | None = None, **extra: Any) -> Any:
    body = {"name": "t", "yaml": yaml, "baseSnapshotOption": await image_id(api), **extra}
    return await api.client.post(
        "/api/templates", json=body, headers=api.auth(key or api.admin_key)
    )


@pytest.mark.parametrize(
    ("yaml", "loc", "words"),
    [
        ("- just\n- a list\n", ["body", "yaml"], "mapping"),
        ("name: x\n", ["body", "yaml", "steps"], "steps"),
        ("name: x\nsteps: []\n", ["body", "yaml", "steps"], "steps"),
        ("name: x\nsteps:\n  - type: teleport\n", ["body", "yaml", "steps", 0, "type"], "teleport"),
        (
            "name: x\nsteps:\n  - run: a\n  - type: exposeHttpService\n    name: web\n",
            ["body", "yaml", "steps", 1, "port"],
            "line 4",
        ),
        (
            "name: x\nsteps:\n  - run: a\n    colour: red\n",
            ["body", "yaml", "steps", 0, "colour"],
            "colour",
        ),
        ("name: x\nsteps:\n  - run: [unclosed\n", ["body", "yaml"], "line"),
        ("name: &n x\nsteps:\n  - run: *n\n", ["body", "yaml"], "aliases"),
    ],
)
async def test_bad_specs_are_422_naming_the_step_and_field(
    fake_api: Api, yaml: str, loc: list[Any], words: str
) -> None:
    refused = await create(fake_api, yaml)
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == loc, problem
    assert words in problem["msg"], problem


async def test_billion_laughs_is_refused_at_once(fake_api: Api) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [*{previous},*{previous},*{previous},*{previous}]")
    refused = await create(fake_api, "\n".join(lines) + "\nname: x\nsteps:\n  - run: a\n")
    assert refused.status_code == 422 and "aliases" in refused.text


def nested(depth: int, style: str) -> str:
    """A spec whose extra key nests `depth` levels deep (flow lists or block mappings)."""
    if style == "flow":
        return "name: x\nsteps:\n  - run: a\nextra: " + "[" * depth + "]" * depth + "\n"
    block = "".join(" " * level + "a:\n" for level in range(depth)) + " " * depth + "b\n"
    return "name: x\nsteps:\n  - run: a\nextra:\n" + block


@pytest.mark.parametrize(("style", "depth"), [("flow", 5000), ("block", 600)])
async def test_deeply_nested_yaml_is_422_naming_the_depth_limit(
    fake_api: Api, style: str, depth: int
) -> None:
    """Nesting past the limit is refused as it is reached (the composer recurses per level;
    unbounded, Python's recursion limit answered 500), on create and on update."""
    refused = await create(fake_api, nested(depth, style))
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["body", "yaml"]
    assert f"{MAX_DEPTH} levels (nesting depth)" in problem["msg"], problem
    created = await create(fake_api, nested(MAX_DEPTH - 3, style))
    assert created.status_code == 201, created.text
    updated = await fake_api.client.put(
        f"/api/templates/{created.json()['id']}",
        json={"yaml": nested(depth, style)},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert updated.status_code == 422 and "nesting depth" in updated.text


async def test_an_oversized_spec_is_413(fake_api: Api) -> None:
    padding = "#" * 100 + "\n"
    yaml = GOOD + padding * (MAX_SPEC_BYTES // len(padding) + 1)
    refused = await create(fake_api, yaml)
    assert refused.status_code == 413 and "KiB" in refused.json()["detail"]


async def test_create_get_list_update_and_delete(fake_api: Api) -> None:
    created = await create(fake_api, GOOD, description="first")
    assert created.status_code == 201, created.text
    body = created.json()
    template_id = body["id"]
    assert template_id.startswith("tpl_")
    assert (body["status"], body["step_count"], body["cached_step_count"]) == ("draft", 2, 0)
    assert body["yaml"] == GOOD and body["run_id"] is None
    steps = body["steps"]
    assert [(s["index"], s["type"], s["status"]) for s in steps] == [
        (0, "command", "pending"),
        (1, "exportSecret", "pending"),
    ]
    assert steps[0]["command"] == "echo hi" and steps[1]["export_secret"]["name"] == "TOKEN"
    auth = fake_api.auth(fake_api.admin_key)
    by_hash = await fake_api.client.get(
        f"/api/templates/by-hash/{body['content_hash']}", headers=auth
    )
    assert by_hash.status_code == 200 and by_hash.json()["id"] == template_id
    listed = (await fake_api.client.get("/api/templates", headers=auth)).json()["data"]
    assert [(t["id"], t["description"]) for t in listed] == [(template_id, "first")]

    renamed = await fake_api.client.put(
        f"/api/templates/{template_id}",
        json={"name": "renamed", "yaml": None, "description": None, "baseSnapshotOption": None},
        headers=auth,
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert renamed.json()["yaml"] == GOOD and renamed.json()["description"] == "first"
    bad_update = await fake_api.client.put(
        f"/api/templates/{template_id}", json={"yaml": "name: x\nsteps: 3\n"}, headers=auth
    )
    assert bad_update.status_code == 422

    deleted = await fake_api.client.delete(f"/api/templates/{template_id}", headers=auth)
    assert deleted.status_code == 204
    gone = await fake_api.client.get(f"/api/templates/{template_id}", headers=auth)
    assert gone.status_code == 404


async def test_other_orgs_get_404_and_instant_start_says_why_not(fake_api: Api) -> None:
    template_id = (await create(fake_api, GOOD)).json()["id"]
    outsider = await fake_api.new_user("tpl-outsider")
    for method, path in [
        ("GET", f"/api/templates/{template_id}"),
        ("DELETE", f"/api/templates/{template_id}"),
        ("POST", f"/api/templates/{template_id}/cache"),
        ("GET", f"/api/templates/{template_id}/events"),
    ]:
        hidden = await fake_api.client.request(method, path, headers=fake_api.auth(outsider))
        assert hidden.status_code == 404, (method, path, hidden.text)
    assert (await fake_api.client.get("/api/templates", headers=fake_api.auth(outsider))).json()[
        "data"
    ] == []

    async def availability(key: str) -> Any:
        answer = await fake_api.client.get(
            f"/api/templates/{template_id}/instant-devbox/availability", headers=fake_api.auth(key)
        )
        assert answer.status_code == 200
        return answer.json()

    assert await availability(outsider) == {
        "template_id": template_id,
        "available": False,
        "reason": "forbidden",
    }
    assert (await availability(fake_api.admin_key))["reason"] == "not_ready"
    refused = await fake_api.client.post(
        f"/api/templates/{template_id}/instant-devbox", headers=fake_api.auth(fake_api.admin_key)
    )
    assert refused.status_code == 409 and "not_ready" in refused.json()["detail"]


async def test_run_routes_answer_clearly_before_any_build(fake_api: Api) -> None:
    template_id = (await create(fake_api, GOOD)).json()["id"]
    auth = fake_api.auth(fake_api.admin_key)
    no_run = await fake_api.client.get(f"/api/templates/{template_id}/events", headers=auth)
    assert no_run.status_code == 404 and "run" in no_run.json()["detail"]
    not_waiting = await fake_api.client.post(
        f"/api/templates/{template_id}/cache/run_nope/secrets", json={"A": "b"}, headers=auth
    )
    assert not_waiting.status_code == 404
    nothing = await fake_api.client.delete(f"/api/templates/{template_id}/cache", headers=auth)
    assert nothing.status_code == 204
    wrong_body = await fake_api.client.post(
        f"/api/templates/{template_id}/cache", json={"force": "very"}, headers=auth
    )
    assert wrong_body.status_code == 422
    unknown_base = await create(fake_api, GOOD, baseSnapshotOption="snapshot_nope")
    assert unknown_base.status_code == 404 and "snapshot_nope" in unknown_base.text


async def test_control_characters_in_yaml_are_422_not_500(fake_api: Api) -> None:
    """Found by the OpenAPI fuzzer: YAML's reader refuses them before any parsing."""
    refused = await create(fake_api, "C\x825\U000f8c20F")
    assert refused.status_code == 422 and "YAML" in refused.text
