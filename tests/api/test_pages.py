"""The dashboard's pages on the in-memory VM backend, driven as a browser drives them: sign-in
through the real forms, the session cookie, form tokens on every write, errors in words,
who sees what, the live list, templates and share links, and the pages' security headers.

The test client keeps one cookie jar; `sign_in` empties it first, so each signed-in user is
the only one the following requests speak for (the pages say whom: "Signed in as ...")."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from markupsafe import escape
from support import Api, create_devbox, mint_agent_token, wait_status

from devbox_service.auth import tokens
from devbox_service.auth.web_sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from devbox_service.web.dashboard import Dashboard, RowChange

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
"""What a browser asks for when it opens a page or submits a form."""
HANG_GUARD = 30.0
"""Seconds a live update may take before the test fails instead of hanging."""
YAML = "name: web\ndescription: a web app\nsteps:\n  - title: install nginx\n    run: echo a\n"

FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
PAGE_TOKEN = re.compile(r'<main id="main" data-csrf="([^"]+)"')


# a browser


async def get(api: Api, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return await api.client.get(
        path, headers={**BROWSER, **(headers or {})}, follow_redirects=False
    )


async def post(api: Api, path: str, form: dict[str, str] | None = None) -> httpx.Response:
    return await api.client.post(path, data=form or {}, headers=BROWSER, follow_redirects=False)


async def submit_sign_in(api: Api, key: str, next_path: str = "/devboxes") -> httpx.Response:
    """Open the sign-in form (a fresh browser: no cookies) and submit it with `key`."""
    api.client.cookies.clear()
    form = await get(api, f"/sign-in?next={next_path}")
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


async def api_detail(api: Api, method: str, path: str, key: str) -> str:
    """The message the JSON API answers for a refused call (the page must say the same)."""
    response = await api.client.request(method, path, headers=api.auth(key))
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
    forged = await post(fake_api, "/sign-in", {"csrf_token": match.group(1), "api_key": ""})
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
    "target", ["https://evil.example/", "//evil.example", "/\\evil.example", "evil.example"]
)
async def test_sign_in_never_redirects_to_another_site(fake_api: Api, target: str) -> None:
    signed_in = await submit_sign_in(fake_api, fake_api.admin_key, next_path=target)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/devboxes"


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
    rows = await fake_api.services.identities.store.database.fetch_all(
        "SELECT * FROM web_sessions"
    )
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
    assert (await post(fake_api, f"/devboxes/{devbox_id}/actions/pause", {"csrf_token": csrf}))
    message = await api_detail(
        fake_api, "POST", f"/api/devboxes/{devbox_id}/reboot", fake_api.admin_key
    )

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
    assert 'data-can-type="true"' not in devbox_page.text

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
