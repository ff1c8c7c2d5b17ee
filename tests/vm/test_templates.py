"""Templates end to end on real VMs, through a real HTTP server: builds with every event type,
the step cache, failures, secret prompts, cancel, reconnecting to a run's events, instant
devboxes, and the public CLI driving a build."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from live import LiveService, live_service

pytestmark = pytest.mark.vm

TERMINAL = {"completed", "cancelled", "error", "step_failed"}
SECRET_WAIT = 6

COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /root/tcount.new; "
    "mv /root/tcount.new /root/tcount; sleep 0.2; done"
)
FOUR_STEPS = f"""
name: demo
description: four steps
steps:
  - title: write a file
    run: echo built > /root/built.txt
  - title: print, wait, print
    run: echo first; sleep 2; echo second
  - type: tmuxSession
    name: counter
    run: "{COUNTER}"
  - type: exposeHttpService
    name: web
    port: 8080
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    data_dir = tmp_path_factory.mktemp("templates")
    with live_service(data_dir, TEMPLATE_SECRET_WAIT_SECONDS=str(SECRET_WAIT)) as service:
        yield service


def image_id(live: LiveService) -> str:
    images = live.http.get("/api/images", headers=live.headers()).json()["data"]
    return str(next(i["id"] for i in images if i["default"]))


def create(live: LiveService, yaml: str, name: str = "demo") -> dict[str, Any]:
    body = {"name": name, "yaml": yaml, "baseSnapshotOption": image_id(live), "description": None}
    created = live.http.post("/api/templates", json=body, headers=live.headers())
    assert created.status_code == 201, created.text
    return dict(created.json())


def start_run(live: LiveService, template_id: str, **body: Any) -> str:
    started = live.http.post(
        f"/api/templates/{template_id}/cache", json=body or None, headers=live.headers()
    )
    assert started.status_code == 202, started.text
    return str(started.json()["run_id"])


def events(
    live: LiveService, template_id: str, run_id: str, *, stop_after: int | None = None
) -> list[dict[str, Any]]:
    return live.build_events(template_id, run_id, stop_after=stop_after)


def types(found: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in found]


def guest(live: LiveService, devbox_id: str, command: str) -> str:
    return live.run_in(devbox_id, command)


def delete_devbox(live: LiveService, devbox_id: str) -> None:
    live.http.delete(f"/api/devboxes/{devbox_id}", headers=live.headers())


@pytest.fixture(scope="module")
def built(live: LiveService) -> dict[str, Any]:
    """The four-step template, built once: (template, the events of its first run)."""
    template = create(live, FOUR_STEPS)
    run_id = start_run(live, template["id"])
    found = events(live, template["id"], run_id)
    return {"template": template, "run_id": run_id, "events": found}


def test_a_build_sends_every_event_in_order_and_streams_output(
    live: LiveService, built: dict[str, Any]
) -> None:
    found = built["events"]
    assert found[0]["type"] == "started" and found[0]["totalSteps"] == 4
    assert found[1]["type"] == "base_selected"
    assert found[-1]["type"] == "completed", found
    for index in range(4):
        started = types(found).index("step_started")
        assert any(e["type"] == "step_started" and e["index"] == index for e in found)
        assert any(e["type"] == "step_completed" and e["index"] == index for e in found)
        assert started >= 2
    # the step that prints, sleeps and prints again: "first" arrives on its own, before
    # "second", while the step still runs
    outputs = [e["content"] for e in found if e["type"] == "output" and e["index"] == 1]
    assert len(outputs) >= 2, outputs
    assert "first" in outputs[0] and "second" not in outputs[0]
    assert "second" in "".join(outputs[1:])
    done_1 = next(
        i for i, e in enumerate(found) if e["type"] == "step_completed" and e["index"] == 1
    )
    first_output = next(
        i for i, e in enumerate(found) if e["type"] == "output" and "first" in e["content"]
    )
    assert first_output < done_1
    web = next(e for e in found if e["type"] == "step_completed" and e["index"] == 3)
    assert web["serviceName"] == "web" and web["servicePort"] == 8080
    completed = found[-1]
    assert completed["instanceId"] == completed["instance"]["id"]
    detail = live.http.get(f"/api/templates/{built['template']['id']}", headers=live.headers())
    body = detail.json()
    assert body["status"] == "ready" and body["cached_step_count"] == 4
    assert body["final_snapshot_id"] == found[-2]["snapshotId"]
    assert [s["status"] for s in body["steps"]] == ["cached"] * 4
    assert body["steps"][2]["tmux_session"]["name"] == "counter"
    # the devbox the run handed over is the one the steps ran in
    handed = completed["instanceId"]
    assert guest(live, handed, "cat /root/built.txt") == "built\n"
    delete_devbox(live, handed)


def test_a_rebuild_with_nothing_changed_runs_no_step(
    live: LiveService, built: dict[str, Any]
) -> None:
    template_id = built["template"]["id"]
    found = events(live, template_id, start_run(live, template_id))
    assert "step_started" not in types(found)
    assert [e["index"] for e in found if e["type"] == "cache"] == [0, 1, 2, 3]
    assert found[-1]["type"] == "completed"
    delete_devbox(live, found[-1]["instanceId"])


def test_changing_step_three_reuses_steps_one_and_two(live: LiveService) -> None:
    template = create(live, FOUR_STEPS, name="changing")
    first = events(live, template["id"], start_run(live, template["id"]))
    delete_devbox(live, first[-1]["instanceId"])
    changed = FOUR_STEPS.replace("sleep 0.2; done", "sleep 0.3; done")
    updated = live.http.put(
        f"/api/templates/{template['id']}",
        json={"name": None, "yaml": changed, "description": None, "baseSnapshotOption": None},
        headers=live.headers(),
    )
    assert updated.status_code == 200, updated.text
    assert [s["status"] for s in updated.json()["steps"]][:2] == ["cached", "cached"]
    found = events(live, template["id"], start_run(live, template["id"]))
    assert [e["index"] for e in found if e["type"] == "cache"] == [0, 1]
    assert [e["index"] for e in found if e["type"] == "step_started"] == [2, 3]
    assert found[-1]["type"] == "completed"
    delete_devbox(live, found[-1]["instanceId"])


def test_a_failing_step_ends_the_run_and_keeps_the_cached_prefix(live: LiveService) -> None:
    yaml = "name: fails\nsteps:\n  - run: echo ok > /root/ok\n  - run: echo broken; exit 3\n"
    template = create(live, yaml, name="fails")
    found = events(live, template["id"], start_run(live, template["id"]))
    failed = found[-1]
    assert failed["type"] == "step_failed" and failed["index"] == 1
    assert "status 3" in failed["message"] and "broken" in failed["message"]
    body = live.http.get(f"/api/templates/{template['id']}", headers=live.headers()).json()
    assert body["status"] == "failed"
    assert [s["status"] for s in body["steps"]] == ["cached", "failed"]
    again = events(live, template["id"], start_run(live, template["id"]))
    assert [e["index"] for e in again if e["type"] == "cache"] == [0]
    listed = live.http.get("/api/devboxes", headers=live.headers()).json()["data"]
    assert not [d for d in listed if d["metadata"].get("template_id") == template["id"]], (
        "a failed build leaves no build devbox behind"
    )


def test_a_secret_prompt_answered_then_secrets_that_time_out(live: LiveService) -> None:
    value = "s3cr3t-value-42"
    yaml = (
        "name: secrets\nsteps:\n"
        "  - type: exportSecret\n    name: API_TOKEN\n"
        '  - run: test "$API_TOKEN" = ' + value + ' && echo "token is $API_TOKEN"\n'
    )
    template = create(live, yaml, name="secrets")
    run_id = start_run(live, template["id"])
    prompt = events(live, template["id"], run_id, stop_after=4)[-1]
    assert prompt["type"] == "awaiting_input" and prompt["secretName"] == "API_TOKEN"
    assert prompt["optional"] is False and prompt["runId"] == run_id
    answered = live.http.post(
        f"/api/templates/{template['id']}/cache/{run_id}/secrets",
        json={"API_TOKEN": value},
        headers=live.headers(),
    )
    assert answered.status_code == 200, answered.text
    found = events(live, template["id"], run_id)
    assert found[-1]["type"] == "completed", found
    output = "".join(e["content"] for e in found if e["type"] == "output")
    assert "token is [redacted]" in output
    assert value not in json.dumps(found)
    handed = found[-1]["instanceId"]
    assert guest(live, handed, ". /root/.devbox/secrets.env; echo $API_TOKEN") == value + "\n"
    delete_devbox(live, handed)

    waits = (
        "name: waits\nsteps:\n"
        "  - type: exportSecret\n    name: MAYBE\n    optional: true\n"
        "  - type: exportSecret\n    name: NEEDED\n"
    )
    template = create(live, waits, name="waits")
    found = events(live, template["id"], start_run(live, template["id"]))
    assert [e["secretName"] for e in found if e["type"] == "awaiting_input"] == ["MAYBE", "NEEDED"]
    assert any("MAYBE skipped" in e.get("message", "") for e in found)
    assert found[-1]["type"] == "step_failed" and "NEEDED" in found[-1]["message"]


def file_holds(path: Any, needle: bytes, chunk: int = 1 << 24) -> bool:
    """Whether a (large) file holds the bytes, read in overlapping chunks."""
    with open(path, "rb") as f:
        tail = b""
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def test_a_build_secret_is_in_no_step_snapshot(live: LiveService) -> None:
    """Steps that leave processes running with the secret in their environment (a detached
    daemon, a tmux server started by a command step): they are ended before the step's
    snapshot, and the guest's freed memory zeroed, so a devbox from the template (anyone's in
    the org) finds the secret nowhere. (Processes that keep the step's SSH channel as stdin
    end with the step anyway; these do not.)"""
    value = f"leaky-{secrets.token_hex(8)}-build-secret"
    yaml = (
        "name: leaky\nsteps:\n"
        "  - type: exportSecret\n    name: LEAK_TOKEN\n"
        '    run: "setsid sleep 1001 </dev/null >/dev/null 2>&1 &"\n'  # a detached daemon
        "  - run: tmux new-session -d -s leak 'sleep 1002'\n"  # a tmux server, with the env
    )
    template = create(live, yaml, name="leaky")
    run_id = start_run(live, template["id"], runtime_secrets={"LEAK_TOKEN": value})
    found = events(live, template["id"], run_id)
    assert found[-1]["type"] == "completed", found
    delete_devbox(live, found[-1]["instanceId"])
    snapshots = [e["snapshotId"] for e in found if e["type"] == "step_completed"]
    assert len(snapshots) == 2

    started = live.http.post(
        f"/api/templates/{template['id']}/instant-devbox",
        json={"inject_secrets": []},  # the secret was given at build time, never saved
        headers=live.headers(),
    )
    assert started.status_code == 200, started.text
    devbox = live.wait_ready(started.json()["id"])
    holders = guest(
        live,
        devbox["id"],
        "for e in /proc/[0-9]*/environ; do grep -lzs '^LEAK_TOKEN=' $e; done; "
        "pgrep -f 'sleep 100[12]'; true",
    )
    assert holders == "", f"processes with the build secret survived into the snapshot: {holders}"
    delete_devbox(live, devbox["id"])

    for snapshot_id in snapshots:
        (state,) = list(live.data_dir.rglob(f"snapshots/{snapshot_id}/state"))
        assert not file_holds(state, value.encode()), f"the secret is in {snapshot_id}'s memory"


def test_cancel_stops_the_run_and_removes_the_build_devbox(live: LiveService) -> None:
    template = create(live, "name: slow\nsteps:\n  - run: sleep 120\n", name="slow")
    run_id = start_run(live, template["id"])
    joined = start_run(live, template["id"])
    assert joined == run_id, "a second build request joins the running one"
    head = events(live, template["id"], run_id, stop_after=3)
    assert types(head) == ["started", "base_selected", "step_started"]
    cancelled = live.http.delete(f"/api/templates/{template['id']}/cache", headers=live.headers())
    assert cancelled.status_code == 204
    found = events(live, template["id"], run_id)
    assert found[-1]["type"] == "cancelled"
    listed = live.http.get("/api/devboxes", headers=live.headers()).json()["data"]
    assert not [d for d in listed if d["metadata"].get("template_id") == template["id"]]


def test_reconnecting_mid_run_replays_the_whole_history(live: LiveService) -> None:
    template = create(live, "name: replay\nsteps:\n  - run: echo a; sleep 3; echo b\n", "replay")
    run_id = start_run(live, template["id"])
    early = events(live, template["id"], run_id, stop_after=3)
    full = events(live, template["id"], run_id)
    assert full[: len(early)] == early and full[0]["type"] == "started"
    assert full[-1]["type"] == "completed"
    history = live.http.get(
        f"/api/templates/{template['id']}/events", params={"run_id": run_id}, headers=live.headers()
    )
    assert history.status_code == 200 and history.json() == full
    delete_devbox(live, full[-1]["instanceId"])


def test_an_instant_devbox_has_the_files_the_session_and_the_service(
    live: LiveService, built: dict[str, Any]
) -> None:
    template_id = built["template"]["id"]
    availability = live.http.get(
        f"/api/templates/{template_id}/instant-devbox/availability", headers=live.headers()
    ).json()
    assert availability == {"template_id": template_id, "available": True, "reason": None}
    started = live.http.post(
        f"/api/templates/{template_id}/instant-devbox",
        json={"name": "instant", "handoff_ttl_seconds": 3600, "handoff_ttl_action": "pause"},
        headers=live.headers(),
    )
    assert started.status_code == 200, started.text
    ttl = started.json()["ttl"]  # the handoff TTL is the devbox's TTL
    assert (ttl["ttl_seconds"], ttl["ttl_action"]) == (3600, "pause")
    devbox = live.wait_ready(started.json()["id"])
    assert devbox["metadata"]["template_id"] == template_id
    assert guest(live, devbox["id"], "cat /root/built.txt") == "built\n"
    sessions = guest(live, devbox["id"], "tmux ls -F '#S'")
    assert "counter" in sessions.split()
    before = int(guest(live, devbox["id"], "cat /root/tcount"))
    time.sleep(1)
    assert int(guest(live, devbox["id"], "cat /root/tcount")) > before
    deadline = time.monotonic() + 30
    while not live.http.get(f"/api/devboxes/{devbox['id']}", headers=live.headers()).json()[
        "networking"
    ]["http_services"]:
        assert time.monotonic() < deadline, "the template's HTTP service was never exposed"
        time.sleep(0.2)
    # deleting the template keeps the devbox working and reclaims the steps only it reached
    deleted = live.http.delete(f"/api/templates/{template_id}", headers=live.headers())
    assert deleted.status_code == 204
    assert guest(live, devbox["id"], "cat /root/built.txt") == "built\n"
    again = create(live, FOUR_STEPS, name="again")
    assert again["cached_step_count"] == 2, "steps 1-2 are shared with another template"
    delete_devbox(live, devbox["id"])


def test_the_public_cli_builds_and_starts_a_template(live: LiveService, tmp_path: Any) -> None:
    spec = tmp_path / "cli.yaml"
    spec.write_text("name: cli\nsteps:\n  - run: echo from-cli > /root/cli.txt\n")
    created = live.cli(
        "template",
        "create",
        "--name",
        "cli",
        "--base-snapshot",
        image_id(live),
        "--file",
        str(spec),
        "--json",
    )
    template_id = json.loads(created.stdout)["id"]
    assert template_id.startswith("tpl_")
    cached = live.cli("template", "cache", template_id, "--json")
    run_id = json.loads(cached.stdout)["run_id"]
    deadline = time.monotonic() + 120
    while True:
        listed = live.cli("template", "events", template_id, "--run-id", run_id, "--json")
        history = json.loads(listed.stdout)
        if history and history[-1]["type"] in TERMINAL:
            break
        assert time.monotonic() < deadline, history
        time.sleep(0.5)
    assert history[-1]["type"] == "completed"
    delete_devbox(live, history[-1]["instanceId"])
    ran = live.cli("template", "run", template_id, "--plain")
    assert "Template is ready for instant start." in ran.stdout, ran.stdout
    shared = live.cli("template", "share", template_id, "--alias", "cli-demo", "--json")
    assert json.loads(shared.stdout)["url"] == f"{live.base_url}/s/cli-demo"
    by_alias = live.cli("template", "run", "cli-demo", "--plain")
    assert "Template is ready for instant start." in by_alias.stdout, by_alias.stdout
    started = live.cli("start", template_id, "--json")
    devbox_id = json.loads(started.stdout)["id"]
    live.wait_ready(devbox_id)
    assert guest(live, devbox_id, "cat /root/cli.txt") == "from-cli\n"
    forced = live.cli("template", "run", template_id, "--plain", "--force")
    assert "Devbox created:" in forced.stdout, forced.stdout
    for devbox in live.http.get("/api/devboxes", headers=live.headers()).json()["data"]:
        if devbox["metadata"].get("template_id") == template_id:
            delete_devbox(live, devbox["id"])


def test_a_restart_mid_run_ends_it_as_an_error_that_says_what_to_do(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("restart")
    with live_service(data_dir, keep_devboxes=True) as service:
        template = create(service, "name: long\nsteps:\n  - run: sleep 120\n", name="long")
        run_id = start_run(service, template["id"])
        head = events(service, template["id"], run_id, stop_after=3)
        assert types(head)[-1] == "step_started"
    with live_service(data_dir) as service:
        found = events(service, template["id"], run_id)
        assert found[: len(head)] == head
        assert found[-1]["type"] == "error" and "restarted" in found[-1]["message"]
        body = service.http.get(f"/api/templates/{template['id']}", headers=service.headers())
        assert body.json()["status"] == "draft"
        listed = service.http.get("/api/devboxes", headers=service.headers()).json()["data"]
        assert listed == [], "the interrupted build's devbox is removed"
