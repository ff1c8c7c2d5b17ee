"""The shared store: PostgreSQL through an asyncpg pool, for several replicas on one database.

- **Writes are serialised** across every process: each transaction first takes one
  transaction-scoped advisory lock, so a read-check-write (a quota, a claim) sees everything
  committed before it, exactly as SQLite's single writer gives the embedded store. Reads take
  no lock and run beside writes.
- **Announcements** travel as `NOTIFY` (sent inside the transaction, so PostgreSQL delivers
  them only if and when it commits) on one listening connection per process. Each carries the
  sending process's id, so a process hears its own announcements at once after commit
  (`Database._committed`) and not a second time from the database.
- **`data_version`** (what read caches key on) is a local counter moved by every commit here
  and every write announced by any other process; while the listening connection is down
  nobody can know what changed, so it is None and nothing is cached, and a reconnect moves it
  and tells every topic's subscribers to re-read.
- **The database gone** (restarted, unreachable) raises `Unavailable` (503) instead of a
  driver error, and the pool reconnects on the next request.
- asyncpg connections belong to one event loop; a caller on another loop (a test's, beside
  the app's) gets a small pool of its own, as aiosqlite serves any loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg

from devbox_service.db.database import Database, Params, Row, Transaction, migrations
from devbox_service.db.dialect import Dialect, numbered_placeholders
from devbox_service.errors import AlreadyExists, Unavailable

log = logging.getLogger(__name__)

CHANNEL = "devbox_service"
"""The one NOTIFY channel; payloads are `origin topic key` (topics and origins have no spaces)."""
WRITES = "writes"
"""The topic every write transaction announces: other processes drop their read caches."""
WRITE_LOCK = 0x64657662  # the advisory lock every write transaction holds ("devb")
RECONNECT_SECONDS = 0.5
PROBE_SECONDS = 5.0
"""How often the listening connection is asked to answer: a connection cut without a word
(a host or network gone) would otherwise look alive, and caches would trust it."""

_GONE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


@contextlib.contextmanager
def _unavailable_when_gone() -> Any:
    try:
        yield
    except _GONE as exc:
        raise Unavailable(f"the database cannot be reached: {type(exc).__name__}") from exc
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists(f"already exists (unique {exc.constraint_name})") from exc


def _rowcount(status: str) -> int:
    """asyncpg answers a command tag ("UPDATE 3", "INSERT 0 1"): its last number."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _args(params: Params) -> list[Any]:
    if isinstance(params, dict):
        raise TypeError("the PostgreSQL store takes positional parameters (?)")
    return list(params)


async def _answers(connection: asyncpg.Connection) -> bool:
    try:
        async with asyncio.timeout(PROBE_SECONDS / 2):
            await connection.fetchval("SELECT 1")
    except (TimeoutError, *_GONE, asyncpg.PostgresError):
        return False
    return True


async def _try_lock(connection: asyncpg.Connection, name: str) -> bool:
    return bool(await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name))


class PostgresTransaction(Transaction):
    def __init__(self, connection: asyncpg.Connection) -> None:
        super().__init__()
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        status = await self._connection.execute(numbered_placeholders(sql), *_args(params))
        return _rowcount(str(status))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._connection.executemany(numbered_placeholders(sql), [_args(r) for r in rows])

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._connection.fetchrow(
            numbered_placeholders(sql), *_args(params)
        )
        return row

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._connection.fetch(numbered_placeholders(sql), *_args(params)))


class PostgresDatabase(Database):
    dialect = Dialect.POSTGRES

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._url = url
        self._home_pool = pool
        self._home_loop = asyncio.get_running_loop()
        self._other_pools: dict[asyncio.AbstractEventLoop, asyncpg.Pool] = {}
        self._origin = secrets.token_hex(8)
        self._version = 0
        self._listening: asyncpg.Connection | None = None
        self._claims: set[str] = set()
        self._listen_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, command_timeout=60
            )
        except _GONE as exc:
            raise Unavailable(f"the database cannot be reached: {type(exc).__name__}") from exc
        database = cls(url, pool)
        try:
            await database.migrate()
            await database._listen()
        except BaseException:
            await pool.close()
            raise
        database._listen_task = asyncio.create_task(database._keep_listening())
        return database

    async def close(self) -> None:
        self._closed = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self._listening is not None:
            with contextlib.suppress(*_GONE):
                await self._listening.close()
        for pool in self._other_pools.values():
            pool.terminate()
        await self._home_pool.close()

    async def _pool(self) -> asyncpg.Pool:
        """The pool of the calling event loop (see the module docstring)."""
        loop = asyncio.get_running_loop()
        if loop is self._home_loop:
            return self._home_pool
        pool = self._other_pools.get(loop)
        if pool is None:
            pool = await asyncpg.create_pool(self._url, min_size=0, max_size=2, command_timeout=60)
            self._other_pools[loop] = pool
        return pool

    # reads and writes -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        with _unavailable_when_gone():
            pool = await self._pool()
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                tx = PostgresTransaction(connection)
                yield tx
                tx.announce(WRITES)
                await connection.executemany(
                    "SELECT pg_notify($1, $2)",
                    [(CHANNEL, f"{self._origin} {topic} {key}") for topic, key in tx.announced],
                )
        self._version += 1
        self._committed(tx)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        with _unavailable_when_gone():
            row: Row | None = await (await self._pool()).fetchrow(
                numbered_placeholders(sql), *_args(params)
            )
            return row

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        with _unavailable_when_gone():
            return list(
                await (await self._pool()).fetch(numbered_placeholders(sql), *_args(params))
            )

    async def ping(self) -> bool:
        try:
            await (await self._pool()).fetchval("SELECT 1")
        except (*_GONE, asyncpg.PostgresError):
            return False
        return self._listening is not None

    def data_version(self) -> int | None:
        return self._version if self._listening is not None else None

    # migrations -----------------------------------------------------------------------------

    async def schema_version(self) -> int:
        pool = await self._pool()
        await pool.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        version = await pool.fetchval("SELECT max(version) FROM schema_version")
        return int(version or 0)

    async def migrate(self) -> int:
        """Each pending migration in its own transaction, under the write lock, so replicas
        starting together apply each exactly once."""
        with _unavailable_when_gone():
            current = await self.schema_version()
            for version, sql in migrations(Dialect.POSTGRES):
                if version <= current:
                    continue
                async with self._home_pool.acquire() as connection, connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                    done = await connection.fetchval("SELECT max(version) FROM schema_version")
                    if int(done or 0) < version:
                        await connection.execute(sql)
                        await connection.execute(
                            "INSERT INTO schema_version (version) VALUES ($1)", version
                        )
                current = version
            return current

    # claims and announcements from other processes -------------------------------------------

    async def claim_sole(self, name: str) -> bool:
        """A session advisory lock on the listening connection: it lasts as long as this
        process is connected, ends with it (however it ends), and is taken again after a
        reconnect."""
        if self._listening is None:
            raise Unavailable("the database cannot be reached")
        if not await _try_lock(self._listening, name):
            return False
        self._claims.add(name)
        return True

    async def _listen(self) -> None:
        connection: asyncpg.Connection = await asyncpg.connect(self._url)
        connection.add_termination_listener(self._lost)
        for name in sorted(self._claims):
            if not await _try_lock(connection, name):
                log.error("another process took the %s claim while this one was cut off", name)
        await connection.add_listener(CHANNEL, self._heard)
        self._listening = connection

    def _lost(self, connection: asyncpg.Connection) -> None:
        if connection is self._listening:
            self._listening = None

    async def _keep_listening(self) -> None:
        """Reconnect the listening connection whenever it drops; after a reconnect every
        subscriber re-reads (announcements made meanwhile are lost, rows are not)."""
        checked = time.monotonic()
        while not self._closed:
            await asyncio.sleep(RECONNECT_SECONDS)
            listening = self._listening
            if listening is not None and not listening.is_closed():
                if time.monotonic() - checked < PROBE_SECONDS:
                    continue
                checked = time.monotonic()
                if await _answers(listening):
                    continue
                log.warning("database listener stopped answering; reconnecting")
                listening.terminate()
            self._listening = None
            try:
                await self._listen()
            except (*_GONE, asyncpg.PostgresError) as exc:
                log.warning("database listener cannot reconnect: %s", type(exc).__name__)
                continue
            log.info("database listener reconnected")
            self._version += 1
            for topic in list(self._listeners):
                self._deliver(topic, "")

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        origin, _, rest = payload.partition(" ")
        if origin == self._origin:
            return
        topic, _, key = rest.partition(" ")
        if topic == WRITES:
            self._version += 1
        self._deliver(topic, key)
