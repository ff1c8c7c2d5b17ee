"""Answers read from the database, kept until anything at all is written to it.

Hot read paths (the principal behind an API key, a devbox's view) are asked on every request
but change rarely. `Database.data_version()` moves whenever anyone commits: on SQLite its
`PRAGMA data_version` (this service's writer or another process such as the operator's CLI);
on PostgreSQL every commit here and every write another replica announces (a key revoked on
one replica is refused on the others as soon as they hear it, milliseconds later; while a
replica cannot hear, it caches nothing).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from devbox_service.db.database import Database

K = TypeVar("K")
V = TypeVar("V")


class VersionedCache(Generic[K, V]):
    def __init__(self, database: Database, limit: int = 10_000) -> None:
        self._database = database
        self._limit = limit
        self._version: int | None = None
        self._entries: dict[K, V] = {}

    def lookup(self, key: K) -> tuple[V | None, int | None]:
        """The cached answer (None: read it) and the version to `store` a fresh one with."""
        version = self._database.data_version()
        if version is None or version != self._version:
            self._entries.clear()
            self._version = version
            return None, version
        return self._entries.get(key), version

    def store(self, key: K, value: V, version: int | None) -> None:
        """Keep `value`, read at `version`, unless something was written since."""
        if version is not None and version == self._version and len(self._entries) < self._limit:
            self._entries[key] = value
