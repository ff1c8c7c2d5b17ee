"""tmux automation end to end: real HTTP through the test client, real VMs, real tmux."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import Api, create_devbox, guest, wait_status

pytestmark = pytest.mark.vm


def tmux_url(devbox_id: str, suffix: str) -> str:
    return f"/api/devboxes/{devbox_id}/tmux{suffix}"


async def call(api: Api, method: str, devbox_id: str, suffix: str, **kwargs: Any) -> httpx.Response:
    return await api.client.request(
        method, tmux_url(devbox_id, suffix), headers=api.auth(api.admin_key), **kwargs
    )


async def new_session(api: Api, devbox_id: str, name: str) -> str:
    """Create a session and return its pane id (send-keys with no keys resolves it)."""
    created = await call(api, "POST", devbox_id, "/sessions", json={"name": name})
    assert created.status_code == 200, created.text
    resolved = await call(
        api, "POST", devbox_id, "/send-keys", json={"target": {"session": name}, "keys": ""}
    )
    assert resolved.status_code == 200, resolved.text
    pane: str = resolved.json()["resolved_pane_id"]
    await wait_for(api, devbox_id, pane, r"#\s*$")  # the shell is ready: typeahead is safe
    return pane


async def send(api: Api, devbox_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await call(api, "POST", devbox_id, "/send-keys", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def wait_for(api: Api, devbox_id: str, pane: str, pattern: str) -> str:
    response = await call(
        api,
        "POST",
        devbox_id,
        f"/panes/{pane}/wait",
        json={"pattern": pattern, "timeout_ms": 30_000},
    )
    assert response.status_code == 200, response.text
    content: str = response.json()["content"]
    return content


async def snapshot(api: Api, devbox_id: str, pane: str, **params: Any) -> str:
    response = await call(api, "GET", devbox_id, f"/panes/{pane}/snapshot", params=params)
    assert response.status_code == 200, response.text
    content: str = response.json()["content"]
    return content


@pytest.fixture(scope="module")
async def own_devbox(vm_api: Api, default_image: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A devbox of our own for pausing, saving and branching."""
    created = await create_devbox(vm_api, default_image["id"], name="tmux-tests")
    yield created
    await vm_api.client.delete(
        f"/api/devboxes/{created['id']}", headers=vm_api.auth(vm_api.admin_key)
    )


async def test_install_debug_and_session_lifecycle(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    installed = await call(vm_api, "POST", box, "/install")
    assert installed.status_code == 200, installed.text
    assert installed.json()["installed"] is True
    assert installed.json()["tmux_version"].startswith("tmux ")

    created = await call(vm_api, "POST", box, "/sessions", json={"name": "life", "detached": True})
    assert created.status_code == 200, created.text
    session = created.json()["session"]
    assert session["name"] == "life" and session["windows"] == 1 and session["clients"] == 0
    assert session["id"].startswith("$") and session["created"] and session["activity"]
    duplicate = await call(vm_api, "POST", box, "/sessions", json={"name": "life"})
    assert duplicate.status_code == 409

    listed = await call(vm_api, "GET", box, "/sessions")
    assert listed.status_code == 200 and listed.headers["x-tmux-installed"] == "true"
    by_name = {s["name"]: s for s in listed.json()["data"]}
    assert by_name["life"] == session
    assert "_devbox_ctl" not in by_name  # the service's own control session stays hidden

    renamed = await call(
        vm_api, "PATCH", box, "/sessions/life/rename", json={"new_name": "life-renamed"}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["session"]["name"] == "life-renamed"
    assert renamed.json()["session"]["id"] == session["id"]
    by_id = await call(
        vm_api, "PATCH", box, f"/sessions/{session['id']}/rename", json={"new_name": "life2"}
    )
    assert by_id.status_code == 200 and by_id.json()["session"]["name"] == "life2"
    assert "life2" in await guest(vm_api, box, "tmux list-sessions -F '#S'")

    debug = (await call(vm_api, "GET", box, "/debug")).json()
    assert debug["user"] == "root" and debug["uid"] == "0"
    assert debug["tmux_version"].startswith("tmux ") and "control mode" in debug["transport"]
    assert "default" in debug["sockets"]
    assert "life2" in [s["name"] for s in debug["sessions"]]

    killed = await call(vm_api, "DELETE", box, "/sessions/life2")
    assert killed.status_code == 200, killed.text
    names = [s["name"] for s in (await call(vm_api, "GET", box, "/sessions")).json()["data"]]
    assert "life2" not in names
    assert (await call(vm_api, "DELETE", box, "/sessions/life2")).status_code == 404
    missing = await call(vm_api, "PATCH", box, "/sessions/nope/rename", json={"new_name": "x"})
    assert missing.status_code == 404


async def test_keys_with_enter_sequences_and_ansi(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "keys")
    result = await send(
        vm_api, box, {"target": {"session": "keys"}, "keys": "echo $((6*7))", "enter": True}
    )
    assert result["ok"] is True and result["resolved_pane_id"] == pane
    assert "\n42" in await wait_for(vm_api, box, pane, r"^42$")

    result = await send(
        vm_api,
        box,
        {
            "pane_id": pane,
            "sequence": ["sleep 600", "ENTER", "C-c", "echo after-interrupt", "ENTER"],
            "pause_ms": 200,
        },
    )
    assert result["sent"] == '"sleep 600" Enter C-c "echo after-interrupt" Enter'
    screen = await wait_for(vm_api, box, pane, r"^after-interrupt$")
    assert "^C" in screen
    assert "sleep 600" not in await guest(vm_api, box, "ps -eo args")

    await send(
        vm_api, box, {"pane_id": pane, "keys": r"printf '\033[31mred\033[0m\n'", "enter": True}
    )
    await wait_for(vm_api, box, pane, r"^red$")
    assert "\x1b[31mred" in await snapshot(vm_api, box, pane, ansi="true")
    assert "\x1b" not in await snapshot(vm_api, box, pane)
    await send(vm_api, box, {"pane_id": pane, "keys": "seq 1 500", "enter": True})
    await wait_for(vm_api, box, pane, r"^500\n.+")  # the prompt is back below the output
    last = await snapshot(vm_api, box, pane, lines=50)
    assert len(last.splitlines()) == 50 and last.splitlines()[-2] == "500"
    deep = await snapshot(vm_api, box, pane, lines=2000)
    assert "\n1\n2\n3\n" in deep


async def test_literal_text_is_reproduced_exactly(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "literal")
    await send(vm_api, box, {"pane_id": pane, "keys": "cat > /tmp/literal.txt", "enter": True})
    text = """it's "quoted" $HOME ; ls; `x` \\n %s #{pane_id} ~ é ✓ 日本"""
    result = await send(
        vm_api, box, {"pane_id": pane, "sequence": [text, "ENTER", "C-d"], "literal": True}
    )
    assert result["ok"] is True
    content = await wait_for(vm_api, box, pane, r"^\S*#\s*$")  # the prompt is back
    assert text in content.splitlines()
    assert await guest(vm_api, box, "cat /tmp/literal.txt") == text + "\n"


async def test_two_hundred_commands_with_enter_all_run(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "many")
    await guest(vm_api, box, "rm -f /tmp/many.txt")
    for i in range(200):
        result = await send(
            vm_api, box, {"pane_id": pane, "keys": f"echo {i} >> /tmp/many.txt", "enter": True}
        )
        assert result["ok"] is True, (i, result)
    await send(vm_api, box, {"pane_id": pane, "keys": "echo all-sent", "enter": True})
    await wait_for(vm_api, box, pane, "^all-sent$")
    lines = (await guest(vm_api, box, "cat /tmp/many.txt")).split()
    assert lines == [str(i) for i in range(200)]


async def test_stream_delivers_a_change(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "streamed")
    # The change comes from the guest a little later (the test client answers a streamed
    # request only once it ends, so the test cannot act while the stream is open).
    await send(
        vm_api, box, {"pane_id": pane, "keys": "sleep 3; echo stream-$((40+2))", "enter": True}
    )
    response = await call(
        vm_api,
        "GET",
        box,
        f"/panes/{pane}/stream",
        params={"max_events": 2, "timeout_ms": 60_000, "debounce_ms": 20},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert [e["seq"] for e in events] == [1, 2]
    assert all(e["pane_id"] == pane for e in events)
    assert "stream-42" not in events[0]["content"]
    assert "stream-42" in events[1]["content"]
    gone = await call(vm_api, "GET", box, "/panes/%9999/stream")
    assert gone.status_code == 404


async def test_wait_on_pattern_idle_and_timeout(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "waiting")
    await send(vm_api, box, {"pane_id": pane, "keys": "sleep 2; echo wait-done", "enter": True})
    matched = await call(
        vm_api, "POST", box, f"/panes/{pane}/wait", json={"pattern": "^wait-d.ne$"}
    )
    assert matched.status_code == 200, matched.text
    assert matched.json()["condition"] == "pattern" and matched.json()["match"] == "wait-done"
    idle = await call(
        vm_api, "POST", box, f"/panes/{pane}/wait", json={"idle_ms": 500, "timeout_ms": 20_000}
    )
    assert idle.status_code == 200 and idle.json()["condition"] == "idle"
    assert "wait-done" in idle.json()["content"]
    missed = await call(
        vm_api,
        "POST",
        box,
        f"/panes/{pane}/wait",
        json={"pattern": "never-there", "timeout_ms": 1000},
    )
    assert missed.status_code == 408
    assert "never-there" in missed.json()["detail"] and "1000 ms" in missed.json()["detail"]
    bad = await call(vm_api, "POST", box, f"/panes/{pane}/wait", json={"pattern": "("})
    assert bad.status_code == 422
    assert (await call(vm_api, "POST", box, f"/panes/{pane}/wait", json={})).status_code == 422


async def test_bad_input(vm_api: Api, devbox: dict[str, Any]) -> None:
    box = devbox["id"]
    pane = await new_session(vm_api, box, "bad")
    for name in ["a:b", "a.b", ""]:
        response = await call(vm_api, "POST", box, "/sessions", json={"name": name})
        assert response.status_code == 422, (name, response.text)
    rename = await call(vm_api, "PATCH", box, "/sessions/bad/rename", json={"new_name": "x.y"})
    assert rename.status_code == 422
    neither = await call(vm_api, "POST", box, "/send-keys", json={"pane_id": pane})
    assert neither.status_code == 422
    assert isinstance(neither.json()["detail"], list)
    huge = await call(
        vm_api, "POST", box, "/send-keys", json={"pane_id": pane, "keys": "x" * (64 * 1024 + 1)}
    )
    assert huge.status_code == 413
    for unknown in ["%9999", "abc"]:
        response = await call(vm_api, "GET", box, f"/panes/{unknown}/snapshot")
        assert response.status_code == 404, response.text
    no_session = await call(
        vm_api, "POST", box, "/send-keys", json={"target": {"session": "ghost"}, "keys": "x"}
    )
    assert no_session.status_code == 404
    too_many = await call(vm_api, "GET", box, f"/panes/{pane}/snapshot", params={"lines": 2001})
    assert too_many.status_code in (400, 422)
    assert (await call(vm_api, "GET", "dbx_nope", "/sessions")).status_code == 404


async def test_sessions_survive_pause_resume_save_and_branch(
    vm_api: Api, own_devbox: dict[str, Any]
) -> None:
    key, box = vm_api.admin_key, own_devbox["id"]
    pane = await new_session(vm_api, box, "durable")
    await send(vm_api, box, {"pane_id": pane, "keys": "echo before-pause", "enter": True})
    await wait_for(vm_api, box, pane, "^before-pause$")

    paused = await vm_api.client.post(f"/api/devboxes/{box}/pause", headers=vm_api.auth(key))
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    refused = await call(vm_api, "GET", box, "/sessions")
    assert refused.status_code == 409 and "paused" in refused.json()["detail"]
    resumed = await vm_api.client.post(f"/api/devboxes/{box}/resume", headers=vm_api.auth(key))
    assert resumed.status_code == 200 and resumed.json()["status"] == "ready"
    names = [s["name"] for s in (await call(vm_api, "GET", box, "/sessions")).json()["data"]]
    assert "durable" in names
    await send(vm_api, box, {"pane_id": pane, "keys": "echo after-resume", "enter": True})
    assert "before-pause" in await wait_for(vm_api, box, pane, "^after-resume$")

    saved = await vm_api.client.post(
        f"/api/devboxes/{box}/save", json={"name": "tmux-save"}, headers=vm_api.auth(key)
    )
    assert saved.status_code == 200, saved.text
    await send(vm_api, box, {"pane_id": pane, "keys": "echo after-save", "enter": True})
    await wait_for(vm_api, box, pane, "^after-save$")
    branched = await vm_api.client.post(
        f"/api/devboxes/{box}/branch", json={"count": 1}, headers=vm_api.auth(key)
    )
    assert branched.status_code == 200, branched.text
    clone = await wait_status(vm_api, key, branched.json()["instances"][0]["id"])
    try:
        listed = await call(vm_api, "GET", clone["id"], "/sessions")
        assert "durable" in [s["name"] for s in listed.json()["data"]]
        await send(vm_api, clone["id"], {"pane_id": pane, "keys": "echo in-clone", "enter": True})
        assert "before-pause" in await wait_for(vm_api, clone["id"], pane, "^in-clone$")
        # the parent kept working alongside
        await send(vm_api, box, {"pane_id": pane, "keys": "echo parent-too", "enter": True})
        assert "in-clone" not in await wait_for(vm_api, box, pane, "^parent-too$")
    finally:
        deleted = await vm_api.client.delete(
            f"/api/devboxes/{clone['id']}", headers=vm_api.auth(key)
        )
        assert deleted.status_code == 200
    assert (await call(vm_api, "GET", clone["id"], "/sessions")).status_code == 404
