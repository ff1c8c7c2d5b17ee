"""The store: one interface (`Database`), SQLite embedded by default, PostgreSQL when shared."""

from __future__ import annotations

from pathlib import Path

from devbox_service.db.database import Database, Row, Transaction
from devbox_service.db.sqlite import SQLiteDatabase

__all__ = ["Database", "Row", "SQLiteDatabase", "Transaction", "open_database"]


async def open_database(database_url: str, sqlite_path: Path) -> Database:
    """PostgreSQL at `database_url` when one is set, otherwise the SQLite file (migrated)."""
    if database_url:
        from devbox_service.db.postgres import PostgresDatabase

        return await PostgresDatabase.open(database_url)
    return await SQLiteDatabase.open(sqlite_path)
