"""Answers read from the database, kept until anything at all is written to it.

Hot read paths (the principal behind an API key, a devbox's view) are asked on every request
but change rarely. SQLite's `PRAGMA data_version` moves whenever any connection commits —
this service's writer or another process such as the operator's CLI — so a cache keyed by it
can never serve an answer older than the last write.
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
