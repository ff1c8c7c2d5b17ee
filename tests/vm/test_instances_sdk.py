"""The public `morphcloud` SDK and CLI driving instances on a real service with real VMs:
images, start and wait, exec (plain and streaming), metadata filters, pause and resume, the
CLI's list and exec, stop."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
from live import VENV_BIN, LiveService, live_service
from morphcloud.api import ApiError, Instance, MorphCloudClient

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("instances")) as service:
        yield service


def client(live: LiveService) -> MorphCloudClient:
    return MorphCloudClient(
        api_key=live.key,
        base_url=f"{live.base_url}/api",
        ssh_hostname="127.0.0.1",
        ssh_port=live.ssh_port,
    )


def ready_instance(morph: MorphCloudClient, **options: Any) -> Instance:
    """An instance of the default image, started with `options`, once it is ready."""
    (image,) = morph.images.list()
    instance = morph.instances.start(image.id, **options)
    instance.wait_until_ready(timeout=300)
    return instance


def morphcloud(live: LiveService, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MORPH_API_KEY": live.key,
        "MORPH_BASE_URL": f"{live.base_url}/api",
        "HOME": str(live.data_dir),
    }
    return subprocess.run(
        [str(VENV_BIN / "morphcloud"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_the_sdk_starts_execs_filters_pauses_and_stops_an_instance(live: LiveService) -> None:
    morph = client(live)
    (image,) = morph.images.list()
    instance = morph.instances.start(image.id, metadata={"env": "t"})
    instance.wait_until_ready(timeout=300)
    assert instance.status == "ready"
    devbox = live.http.get(f"/api/devboxes/{instance.id}", headers=live.headers())
    assert devbox.status_code == 200  # the same record, seen as a devbox

    assert instance.exec("echo hi").stdout == "hi\n"
    failed = instance.exec("echo oops >&2; exit 3")
    assert (failed.exit_code, failed.stderr) == (3, "oops\n")
    assert instance.exec(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    streamed: list[str] = []
    result = instance.exec("for i in 1 2 3; do echo $i; sleep 0.2; done", on_stdout=streamed.append)
    assert "".join(streamed) == "1\n2\n3\n" and result.exit_code == 0

    with instance.ssh() as ssh:  # type: ignore[no-untyped-call]  # `{id}:{api_key}`, any key
        assert ssh.run("echo via-ssh").stdout.strip() == "via-ssh"  # a pty: CRLF
    local = live.data_dir / "upload.txt"
    local.write_text("uploaded\n")
    instance.upload(str(local), "/root/uploaded.txt")
    assert instance.exec("cat /root/uploaded.txt").stdout == "uploaded\n"

    instance.set_metadata({"role": "worker"})
    found = morph.instances.list(metadata={"env": "t", "role": "worker"})
    assert [i.id for i in found] == [instance.id]
    assert morph.instances.list(metadata={"role": "nobody"}) == []

    instance.set_wake_on(wake_on_ssh=True, wake_on_http=False)
    wake_on = morph.instances.get(instance.id).wake_on
    assert (wake_on.wake_on_ssh, wake_on.wake_on_http) == (True, False)

    instance.pause()
    assert morph.instances.get(instance.id).status == "paused"
    assert instance.exec("echo woke").stdout == "woke\n"  # exec wakes it, as SSH does
    instance.pause()
    instance.resume()
    instance.wait_until_ready(timeout=300)
    assert instance.exec("echo back").stdout == "back\n"
    instance.reboot()
    instance.wait_until_ready(timeout=300)
    assert instance.exec("cat /proc/uptime").exit_code == 0

    listed = morphcloud(live, "instance", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert instance.id in listed.stdout and json.loads(listed.stdout.split("\n}\n")[0] + "}")
    executed = morphcloud(live, "instance", "exec", instance.id, "echo", "from-cli")
    assert executed.returncode == 0 and "from-cli" in executed.stdout, executed.stderr

    instance.stop()
    with pytest.raises(ApiError) as gone:
        morph.instances.get(instance.id)
    assert gone.value.status_code == 404


def test_the_sdk_caches_by_digest_snapshots_branches_exposes_and_deletes(
    live: LiveService,
) -> None:
    morph = client(live)
    base = morph.snapshots.create(digest="sdk-base")
    assert base.status == "ready"
    assert morph.snapshots.create(digest="sdk-base").id == base.id  # the cache hit
    instance = morph.instances.start(base.id)
    instance.wait_until_ready(timeout=300)
    instance.exec("echo step-two > /root/step; sync")
    step = instance.snapshot(digest="sdk-step")
    assert step.status == "ready" and step.digest == "sdk-step"
    assert instance.snapshot(digest="sdk-step").id == step.id

    snapshot, children = instance.branch(2)
    assert len(children) == 2 and snapshot.status == "ready"
    for child in children:
        child.wait_until_ready(timeout=300)
        assert child.exec("cat /root/step").stdout == "step-two\n"

    instance.exec("cd /root && (setsid python3 -m http.server 8080 >/dev/null 2>&1 &)")
    url = instance.expose_http_service("web", 8080)
    deadline = time.monotonic() + 60
    while (served := live.http.get(url, headers=live.headers())).status_code != 200:
        assert time.monotonic() < deadline, f"{url}: {served.status_code} {served.text[:200]}"
        time.sleep(0.5)
    assert "Directory listing" in served.text
    instance.hide_http_service("web")
    assert morph.instances.get(instance.id).networking.http_services == []

    booted = morph.snapshots.get(step.id)
    assert booted.digest == "sdk-step"
    for child in children:
        child.stop()
    instance.stop()
    step.delete()
    with pytest.raises(ApiError) as gone:
        morph.snapshots.get(step.id)
    assert gone.value.status_code == 404


def test_the_sdk_sizes_an_image_and_grows_a_running_disk(live: LiveService) -> None:
    morph = client(live)
    sized = morph.snapshots.create(vcpus=2, memory=1024, disk_size=10000, digest="sdk-sized")
    assert (sized.spec.vcpus, sized.spec.memory, sized.spec.disk_size) == (2, 1024, 10000)
    instance = morph.instances.start(sized.id)
    instance.wait_until_ready(timeout=300)
    measure = (
        "nproc; awk '/MemTotal/{print int($2/1024)}' /proc/meminfo; df -m / | awk 'NR==2{print $2}'"
    )
    cpus, memory_mb, disk_mb = (int(n) for n in instance.exec(measure).stdout.split())
    assert cpus == 2 and 900 < memory_mb <= 1024 and 9000 < disk_mb <= 10000

    instance.exec("echo kept > /root/before-growth; sync")
    operation = morph.instances.resize_disk(instance.id, disk_size=12000, idempotency_key="g1")
    assert operation.status == "succeeded" and operation.capacity_generation == 1
    again = morph.instances.resize_disk(instance.id, disk_size=12000, idempotency_key="g1")
    assert again.id == operation.id
    after = instance.exec("df -m / | awk 'NR==2{print $2}'; cat /root/before-growth").stdout
    grown_mb, kept = after.split()
    assert 11000 < int(grown_mb) <= 12000 and kept == "kept"  # online: files and processes stay
    assert morph.instances.get(instance.id).spec.disk_size == 12000

    saved = instance.snapshot(digest="sdk-grown")
    assert saved.spec.disk_size == 12000
    clone = morph.instances.boot(saved.id, disk_size=14000)  # and grows again as it boots
    clone.wait_until_ready(timeout=300)
    clone_disk, clone_kept = clone.exec(
        "df -m / | awk 'NR==2{print $2}'; cat /root/before-growth"
    ).stdout.split()
    assert 13000 < int(clone_disk) <= 14000 and clone_kept == "kept"

    clone.reboot(vcpus=1, memory=512, disk_size=13000)  # cold, into a new size, disk kept
    clone.wait_until_ready(timeout=300)
    resized = clone.exec(f"{measure}; cat /root/before-growth").stdout.split()
    cpus, memory_mb, disk_mb = (int(n) for n in resized[:3])
    assert cpus == 1 and 400 < memory_mb <= 512 and 13000 < disk_mb <= 14000  # never shrinks
    assert resized[3] == "kept"
    for done in (clone, instance):
        morph.instances.stop(done.id)
    saved.delete()
    sized.delete()


def _login_with_key(live: LiveService, username: str, private_key: str) -> str:
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key))
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        ssh.connect(
            "127.0.0.1",
            port=live.ssh_port,
            username=username,
            pkey=key,
            look_for_keys=False,
            allow_agent=False,
            timeout=60,
        )
        _, stdout, _ = ssh.exec_command("echo with-key")
        return str(stdout.read().decode())
    finally:
        ssh.close()


def test_an_instance_key_logs_in_as_the_instance_and_rotation_ends_the_old_one(
    live: LiveService,
) -> None:
    morph = client(live)
    instance = ready_instance(morph)
    key = instance.ssh_key()
    assert key.public_key.startswith("ssh-ed25519 ") and key.password
    assert _login_with_key(live, instance.id, key.private_key) == "with-key\n"
    fresh = instance.ssh_key_rotate()
    assert fresh.private_key != key.private_key
    with pytest.raises(paramiko.AuthenticationException):
        _login_with_key(live, instance.id, key.private_key)
    assert _login_with_key(live, instance.id, fresh.private_key) == "with-key\n"
    outsider = live.add_user("key-outsider")
    refused = live.http.get(f"/api/instance/{instance.id}/ssh/key", headers=live.headers(outsider))
    assert refused.status_code == 404
    instance.stop()


def test_an_idle_instance_pauses_at_its_ttl_keeping_memory_and_wakes_on_ssh(
    live: LiveService,
) -> None:
    morph = client(live)
    instance = ready_instance(morph, ttl_seconds=4, ttl_action="pause")
    pid = instance.exec("nohup sleep 3600 >/dev/null 2>&1 & echo $!").stdout.strip()
    deadline = time.monotonic() + 60
    while (status := morph.instances.get(instance.id).status) != "paused":
        assert time.monotonic() < deadline, f"the idle instance stayed {status}"
        time.sleep(0.5)
    assert morph.instances.get(instance.id).ttl.ttl_action == "pause"
    key = instance.ssh_key()
    # SSH wakes it (wake_on_ssh is on); its processes were kept in memory
    assert _login_with_key(live, instance.id, key.private_key) == "with-key\n"
    assert morph.instances.get(instance.id).status == "ready"
    instance.set_ttl(None)
    assert instance.exec(f"kill -0 {pid} && echo alive").stdout == "alive\n"
    instance.stop()


def test_an_unused_snapshot_is_reclaimed_at_its_ttl_and_a_used_one_kept(
    live: LiveService,
) -> None:
    morph = client(live)
    instance = ready_instance(morph)
    unused = instance.snapshot(digest="ttl-unused", ttl_seconds=2)
    used = instance.snapshot(digest="ttl-used", ttl_seconds=2)
    child = morph.instances.start(used.id)
    child.wait_until_ready(timeout=300)
    deadline = time.monotonic() + 60
    while True:
        listed = {s.id for s in morph.snapshots.list()}
        if unused.id not in listed:
            break
        assert time.monotonic() < deadline, "the unused snapshot was never reclaimed"
        time.sleep(1)
    assert used.id in listed
    kept = live.http.get(f"/api/snapshot/{used.id}", headers=live.headers()).json()
    assert kept["ttl"]["waiting_for"] == f"devbox {child.id} was started from it"
    child.stop()
    instance.stop()
