from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient
from support import Api

from devbox_service.app import create_app
from devbox_service.auth import tokens
from devbox_service.db import SQLiteDatabase as Database
from devbox_service.db.database import migrations
from devbox_service.secrets.box import KEY_FILE
from devbox_service.settings import Settings


async def test_migrations_from_empty_then_rerun_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    database = await Database.open(path)
    latest = len(migrations())
    assert await database.schema_version() == latest
    tables = {
        r[0] for r in await database.fetch_all("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"users", "orgs", "org_members", "api_keys", "devboxes", "devbox_events"} <= tables
    journal = await database.fetch_one("PRAGMA journal_mode")
    foreign_keys = await database.fetch_one("PRAGMA foreign_keys")
    assert journal is not None and journal[0] == "wal"
    assert foreign_keys is not None and foreign_keys[0] == 1
    await database.close()

    reopened = await Database.open(path)
    assert await reopened.migrate() == latest
    assert await reopened.schema_version() == latest
    await reopened.close()


@pytest.mark.sqlite_only
async def test_first_start_writes_admin_key_0600_and_stores_only_a_hash(api: Api) -> None:
    key_file = Path(api.settings.data_dir) / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = api.admin_key
    assert key.startswith("dbx_") and len(key) > 40
    other = await api.new_user("carol")

    raw = b"".join(p.read_bytes() for p in Path(api.settings.data_dir).glob("devbox.sqlite3*"))
    for secret in (key, other):
        assert secret.encode() not in raw
        assert tokens.hash_secret(secret).encode() in raw


@pytest.mark.sqlite_only
async def test_a_start_closes_an_existing_data_dir_left_open(
    make_settings: Callable[..., Settings],
) -> None:
    # a data dir from before (or restored, or copied): 0755 directories, 0644 files
    settings = make_settings()
    data_dir = Path(settings.data_dir)
    async with AsyncTestClient(create_app(settings)):
        pass
    (data_dir / "ssh").mkdir(exist_ok=True)
    (data_dir / "ssh" / "host_ed25519").write_text("key")
    for d in (data_dir, data_dir / "run", data_dir / "ssh"):
        d.chmod(0o755)
    for f in [*data_dir.iterdir(), *(data_dir / "ssh").iterdir()]:
        if f.is_file():
            f.chmod(0o644)
    names = {f.name for f in data_dir.iterdir()}
    assert {"devbox.sqlite3", "secret-box.key", "admin.key"} <= names
    umask = os.umask(0o022)
    try:
        async with AsyncTestClient(create_app(settings)):
            for d in (data_dir, data_dir / "run", data_dir / "ssh"):
                assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
            files = [f for f in [*data_dir.iterdir(), *(data_dir / "ssh").iterdir()] if f.is_file()]
            # the WAL files exist while the service runs: made from the 0600 database
            assert {"devbox.sqlite3-wal", "devbox.sqlite3-shm"} <= {f.name for f in files}
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            # what is created from now on is private too
            assert os.umask(0o077) == 0o077
    finally:
        os.umask(umask)


async def test_second_start_keeps_the_first_admin_key(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with AsyncTestClient(create_app(settings)):
        pass
    key_file = Path(settings.data_dir) / "admin.key"
    first = key_file.read_text()
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get(
            "/api/devboxes", headers={"Authorization": f"Bearer {first.strip()}"}
        )
        assert response.status_code == 200
    assert key_file.read_text() == first


def test_cli_manages_users_orgs_and_keys(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from devbox_service.cli import main

    monkeypatch.setenv("DEVBOX_DATA_DIR", make_settings().data_dir)
    cap = capsys
    assert main(["users", "create", "dave"]) == 0
    assert main(["users", "create", "erin", "--org", "dave", "--role", "admin"]) == 0
    assert main(["keys", "create", "--user", "erin"]) == 0
    out = cap.readouterr().out.splitlines()
    key_id, key = out[-2].split("\t")[0], out[-1]
    assert key.startswith("dbx_")
    assert main(["orgs", "list"]) == 0
    assert "dave\terin\tadmin" in cap.readouterr().out
    assert main(["keys", "list"]) == 0
    listing = cap.readouterr().out
    assert key_id in listing and key not in listing
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", "key_nope"]) == 1
    assert "not found" in cap.readouterr().err


@pytest.mark.sqlite_only
async def test_a_replaced_secret_key_is_refused_at_start_not_found_at_first_read(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with AsyncTestClient(create_app(settings)):
        pass
    key_file = Path(settings.data_dir) / KEY_FILE
    key_file.write_bytes(Fernet.generate_key())  # every sealed value would be unreadable
    with pytest.raises(BaseException) as refused:
        async with AsyncTestClient(create_app(settings)):
            pass
    said = repr(refused.value) + "".join(repr(e) for e in getattr(refused.value, "exceptions", ()))
    assert KEY_FILE in said
