"""Running the service: backups taken while it serves and restored elsewhere, data dirs of
an earlier release opened by this one, one process per data dir, and the operator commands'
refusals. On the in-memory VM backend (a backend kept across two apps stands for VM files
that stayed on disk); the real-VM side is tests/vm/test_operations_vm.py."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from service_state import SECRET_VALUE, check_served, populate
from support import FIXTURES, Api, operator_cli, wait_ready

from devbox_service import backup as backups
from devbox_service.app import create_app
from devbox_service.backends.memory import MemoryBackend
from devbox_service.data_dir import DataDirLock
from devbox_service.db.database import migrations
from devbox_service.errors import Conflict, InvalidInput
from devbox_service.settings import Settings

pytestmark = pytest.mark.sqlite_only

RELEASES = FIXTURES / "data-dirs"


async def test_a_backup_taken_while_serving_restores_into_a_new_data_dir(
    fake_api: Api,
    fake_backend: MemoryBackend,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    facts = await populate(fake_api.client, fake_api.admin_key)
    target = tmp_path / "backups" / "state.tar"
    data_dir = Path(fake_api.settings.data_dir)

    writes = asyncio.create_task(_keep_writing(fake_api))  # the service keeps serving
    summary = await asyncio.to_thread(backups.backup, data_dir, target)
    writes.cancel()

    assert (summary.devboxes, summary.templates) == (1, 1)
    assert summary.secrets >= 1  # RESTORED, and the BUSY ones written so far
    assert target.stat().st_mode & 0o777 == 0o600, "it holds the key to every secret"
    assert SECRET_VALUE.encode() not in target.read_bytes(), "secrets stay sealed in it"
    restored_dir = tmp_path / "restored"
    restored = backups.restore(target, restored_dir)
    assert restored.schema_version == len(migrations())
    settings = make_settings(data_dir=str(restored_dir), vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=fake_backend)) as client:
        await wait_ready(client)
        await check_served(client, facts, vms_kept=True)
        host_key = restored_dir / backups.HOST_KEY
        assert host_key.read_bytes() == (data_dir / backups.HOST_KEY).read_bytes()


async def _keep_writing(api: Api) -> None:
    admin = api.auth(api.admin_key)
    for n in range(10_000):
        await api.client.put(f"/api/user-secrets/BUSY{n % 5}", json={"value": "x"}, headers=admin)
        await asyncio.sleep(0)


@pytest.mark.parametrize("release", sorted(p.name for p in RELEASES.iterdir() if p.is_dir()))
async def test_a_data_dir_of_an_earlier_release_is_served_after_the_upgrade(
    release: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data_dir = tmp_path / release
    shutil.copytree(RELEASES / release, data_dir)
    facts = json.loads((data_dir / "facts.json").read_text())
    backend = MemoryBackend()  # the VM files were not kept with the fixture
    await backend.start()
    await backend.ensure_image()
    settings = make_settings(data_dir=str(data_dir), vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=backend)) as client:
        await wait_ready(client)
        await check_served(client, facts, vms_kept=False)
        version = await client.app.state.services.database.schema_version()
        assert version == len(migrations())


async def test_restore_refuses_a_data_dir_in_use_damaged_files_and_newer_releases(
    fake_api: Api, tmp_path: Path
) -> None:
    data_dir = Path(fake_api.settings.data_dir)
    good = tmp_path / "good.tar"
    backups.backup(data_dir, good)

    with pytest.raises(Conflict, match="already holds"):
        backups.restore(good, data_dir)  # never over a database
    with pytest.raises(Conflict, match=r"in use by devbox-service serve \(pid"):
        DataDirLock.acquire(data_dir, "restore")

    members = _members(good)
    members["devbox.sqlite3"] = members["devbox.sqlite3"][:-1] + b"X"
    with pytest.raises(InvalidInput, match=r"damaged: devbox\.sqlite3"):
        backups.restore(_archive(tmp_path / "damaged.tar", members), tmp_path / "a")
    hostile = {**_members(good), "../../etc/cron.d/x": b"* * * * * root true\n"}
    with pytest.raises(InvalidInput, match="not a backup of ours"):
        backups.restore(_archive(tmp_path / "hostile.tar", hostile), tmp_path / "b")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(InvalidInput, match="not a backup"):
        backups.restore(tmp_path / "plain.txt", tmp_path / "c")
    newer = _members(good)
    manifest = json.loads(newer["manifest.json"])
    newer["manifest.json"] = json.dumps({**manifest, "schema_version": 999}).encode()
    with pytest.raises(InvalidInput, match="newer than this release"):
        backups.restore(_archive(tmp_path / "newer.tar", newer), tmp_path / "d")
    for refused in ("a", "b", "c", "d"):
        assert not (tmp_path / refused / "devbox.sqlite3").exists(), "nothing half-written"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return operator_cli(data_dir, *args, VM_BACKEND="none")


async def test_the_operator_commands_say_what_is_wrong(fake_api: Api, tmp_path: Path) -> None:
    data_dir = Path(fake_api.settings.data_dir)
    taken = await asyncio.to_thread(_cli, data_dir, "backup", str(tmp_path / "x.tar"))
    assert taken.returncode == 0, taken.stderr
    assert "backed up" in taken.stdout and "keep it as safe" in taken.stdout

    over = await asyncio.to_thread(_cli, data_dir, "restore", str(tmp_path / "x.tar"))
    assert over.returncode == 1 and "in use by devbox-service serve" in over.stderr
    missing = await asyncio.to_thread(_cli, tmp_path / "new", "restore", str(tmp_path / "no.tar"))
    assert missing.returncode == 1 and "no backup file" in missing.stderr
    fresh = await asyncio.to_thread(_cli, tmp_path / "new", "restore", str(tmp_path / "x.tar"))
    assert fresh.returncode == 0, fresh.stderr
    assert "restored" in fresh.stdout and "schema now" in fresh.stdout
    nothing = await asyncio.to_thread(_cli, tmp_path / "empty", "backup", str(tmp_path / "y.tar"))
    assert nothing.returncode == 1 and "no database" in nothing.stderr
