"""The service as users run it (`devbox-service serve` in its own process), driven by the
public clients: the `morphcloud` CLI, paramiko through the SSH gateway, and an agent inside a
devbox calling back with its injected token."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from live import LiveService, live_service

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("live")) as service:
        yield service


@pytest.fixture(scope="module")
def live_devbox(live: LiveService) -> dict[str, Any]:
    return live.create_devbox()


def test_morphcloud_cli_drives_a_devbox(
    live: LiveService, live_devbox: dict[str, Any], tmp_path: Path
) -> None:
    devbox_id = live_devbox["id"]
    assert devbox_id in live.cli("list", "--json").stdout
    assert "READY" in live.cli("list").stdout
    assert "ready" in live.cli("get", devbox_id).stdout

    ran = live.cli("ssh", devbox_id, "--", "echo", "hello-from-cli", check=False)
    assert "hello-from-cli" in ran.stdout and ran.returncode == 0, ran.stdout + ran.stderr
    failed = live.cli("ssh", devbox_id, "--", "sh", "-c", "'exit 3'", check=False)
    assert failed.returncode == 3

    local = tmp_path / "up.txt"
    local.write_bytes(b"copied through sftp\n" * 100)
    live.cli("copy", str(local), f"{devbox_id}:/root/up.txt")
    back = tmp_path / "down.txt"
    live.cli("copy", f"{devbox_id}:/root/up.txt", str(back))
    assert back.read_bytes() == local.read_bytes()

    saved = live.cli("save", devbox_id, "from-cli").stdout
    assert "Snapshot ID" in saved
    assert "paused" in live.cli("pause", devbox_id).stdout.lower()
    assert "ready" in live.cli("resume", devbox_id).stdout.lower()


def test_gateway_exec_pty_sftp_and_wake_on_ssh(
    live: LiveService, live_devbox: dict[str, Any]
) -> None:
    devbox_id = live_devbox["id"]
    paused = live.http.post(f"/api/devboxes/{devbox_id}/pause", headers=live.headers())
    assert paused.json()["status"] == "paused"
    for host in ("127.0.0.1", "::1"):
        client = live.gateway_client(devbox_id, host)
        try:
            _, stdout, stderr = client.exec_command("echo out; echo err >&2; exit 7")
            assert stdout.read() == b"out\n" and stderr.read() == b"err\n"
            assert stdout.channel.recv_exit_status() == 7

            channel = client.invoke_shell(term="xterm", width=80, height=24)
            channel.resize_pty(width=120, height=40)
            channel.send(b"stty size; exit\n")
            output = b""
            while not channel.exit_status_ready() or channel.recv_ready():
                if channel.recv_ready():
                    output += channel.recv(4096)
                else:
                    time.sleep(0.05)
            assert b"40 120" in output

            sftp = client.open_sftp()
            with sftp.open("/root/sftp.bin", "wb") as handle:
                handle.write(bytes(range(256)) * 64)
            with sftp.open("/root/sftp.bin", "rb") as handle:
                assert handle.read() == bytes(range(256)) * 64
            sftp.close()
        finally:
            client.close()
    status = live.http.get(f"/api/devboxes/{devbox_id}", headers=live.headers()).json()["status"]
    assert status == "ready"  # woken by the SSH connection


def test_wrong_gateway_password_is_denied(live: LiveService, live_devbox: dict[str, Any]) -> None:
    credentials = live.http.get(
        f"/api/admin/devboxes/{live_devbox['id']}/ssh-credentials", headers=live.headers()
    ).json()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            "127.0.0.1",
            port=live.ssh_port,
            username=credentials["access_token"],
            password="wrong",
            look_for_keys=False,
            allow_agent=False,
            timeout=60,
        )


def test_injected_agent_token_works_from_inside_the_devbox(
    live: LiveService, live_devbox: dict[str, Any]
) -> None:
    devbox_id = live_devbox["id"]
    minted = live.http.post(
        f"/api/devboxes/{devbox_id}/agent-token",
        json={"inject": True, "purpose": "in-guest agent"},
        headers=live.headers(),
    )
    assert minted.status_code == 200, minted.text
    assert minted.json()["injected"] is True
    assert not {"devbox:secrets:read", "devbox:secrets:write"} & set(minted.json()["scopes"])
    client = live.gateway_client(devbox_id)
    try:

        def in_guest(request: str) -> str:
            command = (
                ". /root/.devbox/agent.env && curl -s -o /dev/null -w '%{http_code}' "
                f'-H "Authorization: Bearer $DEVBOX_AGENT_TOKEN" {request}'
            )
            _, stdout, stderr = client.exec_command(command)
            answer: str = stdout.read().decode().strip() or stderr.read().decode()
            return answer

        _, mode, _ = client.exec_command("stat -c %a /root/.devbox/agent.env")
        assert mode.read().decode().strip() == "600"
        base = "$DEVBOX_SERVICE_BASE_URL/api/devboxes/$DEVBOX_ID"
        assert in_guest(f"{base}/summary") == "200"
        save = "-X POST -H 'Content-Type: application/json' -d '{\"name\": \"by-agent\"}'"
        assert in_guest(f"{save} {base}/save") == "200"
        assert in_guest(f"-X DELETE {base}") == "403"
        secrets = "$DEVBOX_SERVICE_BASE_URL/api/user-secrets"
        assert in_guest(secrets) == "403", "an injected token without secret_names reads none"
    finally:
        client.close()
    assert live.http.get(f"/api/devboxes/{devbox_id}", headers=live.headers()).status_code == 200


def test_morphcloud_cli_deletes_a_devbox(live: LiveService) -> None:
    devbox_id = live.create_devbox()["id"]
    assert "Deleted: True" in live.cli("delete", devbox_id).stdout
    gone = live.http.get(f"/api/devboxes/{devbox_id}", headers=live.headers())
    assert gone.status_code == 404
    missing = live.cli("get", devbox_id, check=False)
    assert missing.returncode != 0 and "404" in missing.stdout + missing.stderr


def test_morphcloud_cli_makes_a_template_on_the_default_image_and_shares_it(
    live: LiveService, tmp_path: Path
) -> None:
    spec = tmp_path / "template.yaml"
    spec.write_text("name: from-cli\nsteps:\n  - title: greet\n    run: echo hi\n")
    made = live.cli(
        "template", "create", "--name", "from-cli", "--base-snapshot", "default",
        "--file", str(spec), "--json",
    )  # fmt: skip
    found = re.search(r"tpl_[0-9a-f]+", made.stdout)
    assert found, made.stdout
    template_id = found.group(0)
    shown = live.http.get(f"/api/templates/{template_id}", headers=live.headers()).json()
    assert shown["base_snapshot_id"] == "default"
    shared = live.cli("template", "share", template_id, "--alias", "cli-share")
    assert "cli-share" in shared.stdout
    visitor = live.http.get("/s/cli-share", headers={"Accept": "text/html"})
    assert visitor.status_code == 303 and visitor.headers["location"].startswith("/sign-in")
