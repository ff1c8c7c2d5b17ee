"""The embedded store: one SQLite file (WAL, foreign keys on), numbered migrations at open.

Writes go through a single aiosqlite connection guarded by an asyncio lock: SQLite serialises
writers anyway, and one lock makes "every multi-row change in one transaction" trivially true.

Reads outside a transaction use a second, read-only connection on the event loop itself. They
are small indexed lookups that take microseconds, far less than a hop to aiosqlite's thread
and a wait behind the writer's lock (the authenticated read path does several per request);
WAL lets them run beside a write and see every committed one. A read that finds the file
busy (rare in WAL) takes the writer's path instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiosqlite

from devbox_service.db.database import Database, Params, Row, Transaction, migrations
from devbox_service.db.dialect import Dialect
from devbox_service.errors import AlreadyExists


class SQLiteTransaction(Transaction):
    def __init__(self, connection: aiosqlite.Connection) -> None:
        super().__init__()
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._connection.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._connection.executemany(sql, rows)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        cursor = await self._connection.execute(sql, params)
        row: Row | None = await cursor.fetchone()
        return row

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self._connection.execute(sql, params)
        return list(await cursor.fetchall())


READ_BUSY_TIMEOUT_MS = 50


def _private(path: Path) -> None:
    """The database and its -wal and -shm files: the service's user's alone (0600)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


class SQLiteDatabase(Database):
    dialect = Dialect.SQLITE

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        super().__init__()
        self._connection = connection
        self._lock = asyncio.Lock()
        self._reader: sqlite3.Connection | None = None
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SQLiteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(path)  # SQLite gives the -wal and -shm files the database file's mode
        connection = await aiosqlite.connect(path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        await connection.execute("PRAGMA journal_mode = WAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        await connection.execute("PRAGMA busy_timeout = 5000")
        await connection.execute("PRAGMA synchronous = NORMAL")
        _private(path)
        database = cls(connection, path)
        await database.migrate()
        database._reader = _open_reader(path)
        return database

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        await self._connection.close()

    async def schema_version(self) -> int:
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return the new version."""
        current = await self.schema_version()
        for version, sql in migrations():
            if version <= current:
                continue
            async with self._lock:
                try:
                    await self._connection.executescript(
                        f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
                    )
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await self._connection.execute("ROLLBACK")
                    raise
            current = version
        return current

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            await self._connection.execute("BEGIN IMMEDIATE")
            tx = SQLiteTransaction(self._connection)
            try:
                yield tx
            except BaseException as exc:
                await self._connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
                    raise AlreadyExists(f"already exists ({exc})") from exc
                raise
            await self._connection.execute("COMMIT")
        self._committed(tx)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        if self._reader is not None:
            with (
                contextlib.suppress(_Busy),
                contextlib.closing(_read(self._reader, sql, params)) as read,
            ):
                found: sqlite3.Row | None = read.fetchone()
                return found
        async with self._lock:
            cursor = await self._connection.execute(sql, params)
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        if self._reader is not None:
            with (
                contextlib.suppress(_Busy),
                contextlib.closing(_read(self._reader, sql, params)) as read,
            ):
                return read.fetchall()
        async with self._lock:
            cursor = await self._connection.execute(sql, params)
            return list(await cursor.fetchall())

    def data_version(self) -> int | None:
        """SQLite's own `PRAGMA data_version`: it moves whenever any connection commits (this
        service's writer, or another process such as the operator's CLI)."""
        if self._reader is None:
            return None
        try:
            row = self._reader.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(row[0])

    async def ping(self) -> bool:
        try:
            await self.fetch_one("SELECT 1")
        except (sqlite3.Error, ValueError):
            return False
        return True


class _Busy(Exception):
    """The read connection found the file locked; the caller reads through the writer."""


def _open_reader(path: Path) -> sqlite3.Connection:
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.row_factory = sqlite3.Row
    reader.execute("PRAGMA query_only = ON")
    reader.execute("PRAGMA foreign_keys = ON")  # as the writer, for anyone reading pragmas
    reader.execute(f"PRAGMA busy_timeout = {READ_BUSY_TIMEOUT_MS}")
    return reader


def _read(reader: sqlite3.Connection, sql: str, params: Params) -> sqlite3.Cursor:
    try:
        return reader.execute(sql, params)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise _Busy from exc
        raise
