"""The store's interface: transactions, reads, migrations, and announcements after commit.

Two adapters stand behind it: SQLite (`sqlite.py`, the embedded default, one process) and
PostgreSQL (`postgres.py`, shared by several replicas). Stores write one SQL for both
(`dialect.py`). What one process learns from another goes through announcements: a
transaction names topics (`announce`), and once it commits every subscriber in every process
on the same database hears them. They are wake-ups, never the data: a subscriber re-reads.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any, Protocol

from devbox_service.db.dialect import Dialect, postgres_ddl

log = logging.getLogger(__name__)

Params = Sequence[Any] | dict[str, Any]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_TWIN_SUFFIX = ".postgres.sql"


class Row(Protocol):
    """A result row, by column name or position (sqlite3.Row and asyncpg's Record)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


Listener = Callable[[str], None]
"""Called with an announcement's key, on the event loop, after the commit that made it."""


def migrations(dialect: Dialect = Dialect.SQLITE) -> list[tuple[int, str]]:
    """The packaged migrations as (version, sql) for `dialect`, in order; versions are 1..N.

    PostgreSQL gets each SQLite migration translated (`postgres_ddl`), or its twin
    `NNNN_name.postgres.sql` where one exists."""
    found: list[tuple[int, str]] = []
    folder = resources.files("devbox_service.db.migrations")
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match or entry.name.endswith(_TWIN_SUFFIX):
            continue
        sql = entry.read_text()
        if dialect is Dialect.POSTGRES:
            twin = folder / entry.name.replace(".sql", _TWIN_SUFFIX)
            sql = twin.read_text() if twin.is_file() else postgres_ddl(sql)
        found.append((int(match.group(1)), sql))
    found.sort()
    expected = list(range(1, len(found) + 1))
    if [v for v, _ in found] != expected:
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, got {found}")
    return found


class Transaction(abc.ABC):
    """The statements of one transaction; only usable inside `Database.transaction()`."""

    def __init__(self) -> None:
        self.announced: set[tuple[str, str]] = set()

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    @abc.abstractmethod
    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    def announce(self, topic: str, key: str = "") -> None:
        """Tell every subscriber of `topic`, in every process, once this commits."""
        self.announced.add((topic, key))


class Database(abc.ABC):
    """Writes are serialised (one transaction at a time, across processes too): every
    read-check-write in a transaction sees all that committed before it, as in SQLite."""

    dialect: Dialect

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """One statement in a transaction of its own."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    @abc.abstractmethod
    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return the new version."""

    @abc.abstractmethod
    def data_version(self) -> int | None:
        """A number that changes whenever anything is committed by anyone (this process or
        another on the same database): what lets a reader cache a query's answer until the
        next write. None when it cannot be known (then nothing may be cached)."""

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    async def claim_sole(self, name: str) -> bool:
        """Hold, for this process's life, a claim no other process on this store may hold at
        once; False when another holds it. (SQLite: always granted; the data dir's lock
        already keeps a second service away.)"""
        return True

    @abc.abstractmethod
    async def close(self) -> None: ...

    def subscribe(self, topic: str, listener: Listener) -> None:
        """Hear `topic`'s announcements from now on (see `Transaction.announce`)."""
        self._listeners.setdefault(topic, []).append(listener)

    def _deliver(self, topic: str, key: str) -> None:
        for listener in self._listeners.get(topic, ()):
            try:
                listener(key)
            except Exception:
                log.exception("a listener of %s failed", topic)

    def _committed(self, tx: Transaction) -> None:
        """Tell this process's subscribers what a transaction announced, once it committed
        (other processes hear it from the database: see the PostgreSQL adapter)."""
        for topic, key in sorted(tx.announced):
            self._deliver(topic, key)
