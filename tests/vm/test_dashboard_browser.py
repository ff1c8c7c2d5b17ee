"""The dashboard in a real headless Chromium against a real service with real VMs: sign in,
watch a devbox pause and come back without reloading, see text sent through the API appear
in the terminal view (and type into it), follow a build to its end, and open a share link
as another member and start a devbox from it. Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import chromium, eventually, screenshot, shown_text, sign_in, terminal_text
from live import LiveService, live_service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.vm

ONE_STEP = """
name: web-demo
description: one step, for the dashboard
steps:
  - title: say hello
    run: echo building; sleep 1; echo built-ok
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("dashboard")) as service:
        yield service


@pytest.fixture(scope="module")
def devbox(live: LiveService) -> dict[str, Any]:
    return live.create_devbox()


@pytest.fixture(scope="module")
def member_key(live: LiveService) -> str:
    return live.add_user("dash-member", org="default")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def row_status(driver: WebDriver, devbox_id: str) -> str | None:
    rows = driver.find_elements(By.ID, f"devbox-{devbox_id}")
    try:
        return rows[0].get_attribute("data-status") if rows else None
    except StaleElementReferenceException:  # the live list replaced the row meanwhile
        return None


def test_sign_in_and_watch_a_devbox_pause_and_resume_without_reloading(
    live: LiveService, devbox: dict[str, Any], browser: WebDriver
) -> None:
    sign_in(browser, live.base_url, live.key)
    assert browser.current_url.endswith("/devboxes")
    assert row_status(browser, devbox["id"]) == "ready"
    screenshot(browser, "devbox-list")
    browser.execute_script("window.notReloaded = true")

    paused = live.http.post(f"/api/devboxes/{devbox['id']}/pause", headers=live.headers())
    assert paused.status_code == 200, paused.text
    eventually(lambda: row_status(browser, devbox["id"]) == "paused", "the row turn paused")
    screenshot(browser, "devbox-list-paused")
    resumed = live.http.post(f"/api/devboxes/{devbox['id']}/resume", headers=live.headers())
    assert resumed.status_code == 200, resumed.text
    eventually(lambda: row_status(browser, devbox["id"]) == "ready", "the row turn ready")
    assert browser.execute_script("return window.notReloaded") is True


def test_text_sent_through_the_api_appears_in_the_terminal_view_and_the_owner_can_type(
    live: LiveService, devbox: dict[str, Any], browser: WebDriver
) -> None:
    devbox_id = devbox["id"]
    created = live.http.post(
        f"/api/devboxes/{devbox_id}/tmux/sessions", json={"name": "agent"}, headers=live.headers()
    )
    assert created.status_code == 200, created.text
    sign_in(browser, live.base_url, live.key, next_path=f"/devboxes/{devbox_id}")
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, ".xterm-rows"), "the terminal")

    sent = live.http.post(
        f"/api/devboxes/{devbox_id}/tmux/send-keys",
        json={"target": {"session": "agent"}, "keys": "echo from-the-$((6*7))-api", "enter": True},
        headers=live.headers(),
    )
    assert sent.status_code == 200, sent.text
    eventually(lambda: "from-the-42-api" in terminal_text(browser), "the API's text on screen")

    browser.find_element(By.CSS_SELECTOR, ".terminal .xterm").click()
    typing = browser.find_element(By.CSS_SELECTOR, ".terminal .xterm-helper-textarea")
    typing.send_keys("echo typed-$((2+3))\n")
    eventually(lambda: "typed-5" in terminal_text(browser), "the typed command's output")
    screenshot(browser, "devbox-terminal")


def terminal_of(driver: WebDriver, pane_id: str) -> str:
    """What the terminal view of one pane last drew ('' while it has none): the screen the
    script handed xterm.js (which renders rows only while the view is on screen)."""
    key = pane_id.removeprefix("%")
    views = driver.find_elements(By.CSS_SELECTOR, f"#terminal-{key} .terminal")
    return (views[0].get_attribute("data-screen") or "") if views else ""


def test_a_session_started_after_the_page_opened_shows_without_a_reload(
    live: LiveService, devbox: dict[str, Any], browser: WebDriver
) -> None:
    devbox_id = devbox["id"]
    sign_in(browser, live.base_url, live.key, next_path=f"/devboxes/{devbox_id}")
    browser.execute_script("window.notReloaded = true")
    created = live.http.post(
        f"/api/devboxes/{devbox_id}/tmux/sessions", json={"name": "late"}, headers=live.headers()
    )
    assert created.status_code == 200, created.text
    # The pane routes take a tmux target, as tmux does: the session's name names its pane.
    pane = live.http.get(
        f"/api/devboxes/{devbox_id}/tmux/panes/late/snapshot", headers=live.headers()
    )
    assert pane.status_code == 200, pane.text
    pane_id = pane.json()["pane_id"]
    sent = live.http.post(
        f"/api/devboxes/{devbox_id}/tmux/send-keys",
        json={"pane_id": pane_id, "keys": "echo late-$((3*3))", "enter": True},
        headers=live.headers(),
    )
    assert sent.status_code == 200, sent.text

    eventually(lambda: "late-9" in terminal_of(browser, pane_id), "the new session's terminal")
    assert browser.execute_script("return window.notReloaded") is True
    for target in ("late:0", "late:0.0", "late:.0", pane_id.removeprefix("%")):
        same = live.http.get(
            f"/api/devboxes/{devbox_id}/tmux/panes/{target}/snapshot", headers=live.headers()
        )
        assert same.status_code == 200 and same.json()["pane_id"] == pane_id, (target, same.text)
    missing = live.http.get(
        f"/api/devboxes/{devbox_id}/tmux/panes/no-such-session/snapshot", headers=live.headers()
    )
    assert missing.status_code == 404, missing.text

    killed = live.http.delete(
        f"/api/devboxes/{devbox_id}/tmux/sessions/late", headers=live.headers()
    )
    assert killed.status_code == 200, killed.text
    eventually(
        lambda: not browser.find_elements(By.ID, f"terminal-{pane_id.removeprefix('%')}"),
        "the ended session's terminal to go",
    )
    screenshot(browser, "devbox-terminal-added-live")


def test_a_member_sees_the_terminal_read_only(
    live: LiveService, devbox: dict[str, Any], member_key: str, browser: WebDriver
) -> None:
    live.http.post(
        f"/api/devboxes/{devbox['id']}/tmux/sessions",
        json={"name": "watch"},
        headers=live.headers(),
    )
    sign_in(browser, live.base_url, member_key, next_path=f"/devboxes/{devbox['id']}")
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, ".xterm-rows"), "the terminal")
    view = browser.find_element(By.CSS_SELECTOR, ".terminal")
    assert view.get_attribute("data-can-type") == "false"
    assert "Read-only" in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, ".type-form")
    refused = live.http.post(
        f"/api/devboxes/{devbox['id']}/tmux/send-keys",
        json={"target": {"session": "watch"}, "keys": "echo no", "enter": True},
        headers=live.headers(member_key),
    )
    assert refused.status_code == 403, refused.text
    screenshot(browser, "devbox-member-view")


def test_follow_a_build_then_a_member_starts_a_devbox_from_its_share_link(
    live: LiveService, member_key: str, browser: WebDriver
) -> None:
    body = {
        "name": "web-demo",
        "yaml": ONE_STEP,
        "baseSnapshotOption": "default",  # the image list marks it so; the id works too
        "description": None,
    }
    created = live.http.post("/api/templates", json=body, headers=live.headers())
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]

    sign_in(browser, live.base_url, live.key, next_path=f"/templates/{template_id}")
    screenshot(browser, "template-page")
    browser.find_element(
        By.CSS_SELECTOR, f"form[action='/templates/{template_id}/build'] button"
    ).click()
    eventually(lambda: "/builds/" in browser.current_url, "the build page", 30)
    state = browser.find_element(By.ID, "build-state")
    eventually(lambda: state.get_attribute("data-finished"), "the build finish", 600)
    assert state.get_attribute("data-finished") == "completed", state.text
    step = browser.find_element(By.ID, "step-0")
    assert step.get_attribute("data-state") == "done"
    assert "built-ok" in step.find_element(By.CSS_SELECTOR, "pre.output").text
    screenshot(browser, "build-page")

    shared = live.http.post(
        f"/api/templates/{template_id}/share", json={"alias": "web-demo"}, headers=live.headers()
    )
    assert shared.status_code == 200, shared.text
    browser.delete_all_cookies()
    browser.get(f"{live.base_url}/s/web-demo")  # an org share: signed out, one signs in first
    eventually(lambda: "/sign-in" in browser.current_url, "the sign-in form", 30)
    assert "say hello" not in browser.page_source  # its steps are the org's
    browser.find_element(By.ID, "api_key").send_keys(member_key)
    browser.find_element(By.CSS_SELECTOR, "form[action='/sign-in'] button").click()
    eventually(lambda: browser.current_url.endswith("/s/web-demo"), "back at the share", 30)
    assert "web-demo" in shown_text(browser, "h1", "the share page's heading")
    screenshot(browser, "share-page")
    browser.find_element(By.CSS_SELECTOR, "form[action='/s/web-demo/start'] button").click()
    eventually(lambda: "done=started" in browser.current_url, "the new devbox's page", 60)
    new_id = browser.current_url.split("/devboxes/")[1].split("?")[0]
    started = live.wait_ready(new_id)
    assert started["metadata"]["template_id"] == template_id
    assert live.run_in(new_id, "echo works", key=member_key) == "works\n"  # the member's own
    browser.get(f"{live.base_url}/devboxes/{new_id}")
    assert browser.find_element(By.ID, "status").text == "ready"
    screenshot(browser, "started-from-share")
