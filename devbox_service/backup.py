"""Back up and restore the service's own state: the database and the keys that read it.

A backup is one tar file (0600: it holds the key that opens every sealed secret) with:
- `devbox.sqlite3`, copied with SQLite's online backup, so it is consistent while the
  service serves and writes;
- `secret-box.key` (sealed SSH passwords and user secrets are unreadable without it),
  `admin.key` and the SSH gateway's host key (users' known_hosts stay valid);
- `manifest.json`: the format, the schema version, and each file's SHA-256.

What it does not hold is the VMs' files (`vms/`: disks and memory states, gigabytes): a
state restored where they are not has its devboxes marked `error` (lost VM) at start-up,
with everything else (users, keys, secrets, templates, snapshots' records) as it was.

Restoring writes into a data directory that holds no database yet, never over one, and
upgrades the schema as any start does; a backup from a newer release is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path

import msgspec

from devbox_service.auth.service import ADMIN_KEY_FILE
from devbox_service.db.database import migrations
from devbox_service.errors import Conflict, InvalidInput, NotFound
from devbox_service.secrets.box import KEY_FILE
from devbox_service.ssh.gateway import HOST_KEY_FILE

FORMAT = 1
DATABASE_FILE = "devbox.sqlite3"
HOST_KEY = f"ssh/{HOST_KEY_FILE}"
REQUIRED = (DATABASE_FILE, KEY_FILE)
OPTIONAL = (ADMIN_KEY_FILE, HOST_KEY)
MANIFEST = "manifest.json"


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int
    schema_version: int
    created_at: float
    files: dict[str, str]  # name -> sha256


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup holds, counted from its database (for the operator's eyes)."""

    schema_version: int
    users: int
    api_keys: int
    devboxes: int
    snapshots: int
    templates: int
    secrets: int

    def describe(self) -> str:
        return (
            f"{self.users} users, {self.api_keys} API keys, {self.devboxes} devboxes, "
            f"{self.snapshots} snapshots, {self.templates} templates, {self.secrets} secrets "
            f"(schema {self.schema_version})"
        )


def backup(data_dir: Path, target: Path) -> Summary:
    """Write a backup of `data_dir` to `target` (replaced only once complete)."""
    database = data_dir / DATABASE_FILE
    if not database.exists():
        raise NotFound(f"no database in {data_dir}: is DEVBOX_DATA_DIR right?")
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".backup-") as scratch:
        copy = Path(scratch) / DATABASE_FILE
        _online_copy(database, copy)
        files = {DATABASE_FILE: copy, KEY_FILE: data_dir / KEY_FILE}
        files |= {name: data_dir / name for name in OPTIONAL if (data_dir / name).exists()}
        if not files[KEY_FILE].exists():
            raise NotFound(f"no {KEY_FILE} in {data_dir}: without it the secrets are lost")
        summary = summarize(copy)
        manifest = Manifest(
            format=FORMAT,
            schema_version=summary.schema_version,
            created_at=time.time(),
            files={name: _sha256(path) for name, path in files.items()},
        )
        partial = Path(scratch) / "backup.tar"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as archive:
            _add_bytes(archive, MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)))
            for name, path in files.items():
                _add_bytes(archive, name, path.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    return summary


def restore(source: Path, data_dir: Path) -> Summary:
    """Unpack a backup into `data_dir` (which must hold no database or key yet) and bring its
    schema up to this release. Raises NotFound, InvalidInput (not a backup, damaged, from a
    newer release) or Conflict (the directory already has state)."""
    if not source.is_file():
        raise NotFound(f"no backup file at {source}")
    taken = [n for n in (DATABASE_FILE, KEY_FILE) if (data_dir / n).exists()]
    if taken:
        raise Conflict(
            f"{data_dir} already holds {' and '.join(taken)}: restore into a new or empty data "
            "dir (DEVBOX_DATA_DIR), or move those files away first"
        )
    contents = _read_backup(source)
    manifest = msgspec.json.decode(contents.pop(MANIFEST), type=Manifest)
    newest = len(migrations())
    if manifest.schema_version > newest:
        raise InvalidInput(
            f"the backup's schema is version {manifest.schema_version}, newer than this "
            f"release's {newest}: restore it with the release that made it, or a later one"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".restore-") as scratch:
        for name, data in contents.items():
            path = Path(scratch) / name
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        # The database last: a directory holding it counts as restored.
        for name in sorted(contents, key=lambda n: n == DATABASE_FILE):
            final = data_dir / name
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(Path(scratch) / name, final)
    return summarize(data_dir / DATABASE_FILE)


def summarize(database: Path) -> Summary:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:

        def count(sql: str) -> int:
            return int(db.execute(sql).fetchone()[0])

        return Summary(
            schema_version=count("PRAGMA user_version"),
            users=count("SELECT count(*) FROM users"),
            api_keys=count("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"),
            devboxes=count("SELECT count(*) FROM devboxes"),
            snapshots=count("SELECT count(*) FROM snapshots"),
            templates=count("SELECT count(*) FROM templates"),
            secrets=count("SELECT count(*) FROM user_secrets"),
        )


def _online_copy(database: Path, copy: Path) -> None:
    """SQLite's backup API: a consistent copy while other connections write (WAL)."""
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.execute("PRAGMA busy_timeout = 5000")
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    os.chmod(copy, 0o600)


def _read_backup(source: Path) -> dict[str, bytes]:
    """The backup's files by name, each checked against the manifest; only known names and
    regular files are read (an archive is input, and may be hostile)."""
    known = {MANIFEST, *REQUIRED, *OPTIONAL}
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(source, mode="r:*") as archive:
            for member in archive.getmembers():
                if member.name not in known or not member.isfile():
                    raise InvalidInput(f"{source} holds {member.name!r}: not a backup of ours")
                extracted = archive.extractfile(member)
                assert extracted is not None
                contents[member.name] = extracted.read()
    except tarfile.TarError as exc:
        raise InvalidInput(f"{source} is not a backup (a tar file): {exc}") from None
    if MANIFEST not in contents:
        raise InvalidInput(f"{source} has no {MANIFEST}: not a backup of ours")
    try:
        manifest = msgspec.json.decode(contents[MANIFEST], type=Manifest)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"{source}: its {MANIFEST} is not valid ({exc})") from None
    if manifest.format != FORMAT:
        raise InvalidInput(f"{source} is backup format {manifest.format}; this reads {FORMAT}")
    missing = [n for n in REQUIRED if n not in contents]
    if missing or set(manifest.files) != set(contents) - {MANIFEST}:
        raise InvalidInput(f"{source} is incomplete (missing {', '.join(missing) or 'files'})")
    for name, digest in manifest.files.items():
        if hashlib.sha256(contents[name]).hexdigest() != digest:
            raise InvalidInput(f"{source} is damaged: {name} does not match its checksum")
    return contents


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(time.time())
    archive.addfile(info, io.BytesIO(data))
