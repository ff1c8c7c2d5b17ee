"""Rows to Structs and back through `db.records.Table`, on a real SQLite file."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devbox_service.db import SQLiteDatabase as Database
from devbox_service.db.records import Table


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Thing(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    colour: Colour
    tags: dict[str, Any]
    note: str | None
    created_at: float


THINGS = Table("things", Thing, json_columns=["tags"], extra_columns=["secret_hash"])


async def test_round_trip_upsert_and_extra_columns(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "t.sqlite")
    try:
        async with database.transaction() as tx:
            await tx.execute(
                "CREATE TABLE things (id TEXT PRIMARY KEY, colour TEXT, tags TEXT, note TEXT, "
                "created_at REAL, secret_hash TEXT)"
            )
            first = Thing(id="a", colour=Colour.RED, tags={"k": [1]}, note=None, created_at=1.0)
            await THINGS.insert(tx, first, secret_hash="h")
        row = await database.fetch_one("SELECT * FROM things WHERE id = 'a'")
        assert row is not None and row["colour"] == "red" and row["tags"] == '{"k": [1]}'
        assert row["secret_hash"] == "h"
        assert THINGS.decode(row) == first

        changed = Thing(id="a", colour=Colour.BLUE, tags={}, note="n", created_at=2.0)
        async with database.transaction() as tx:
            await THINGS.insert(tx, changed, upsert_on=("id",), keep=("created_at",))
        rows = await database.fetch_all("SELECT * FROM things")
        assert THINGS.decode_all(rows) == [
            Thing(id="a", colour=Colour.BLUE, tags={}, note="n", created_at=1.0)
        ]
        assert THINGS.encode_partial({"colour": Colour.RED, "tags": {"x": 1}}) == {
            "colour": "red",
            "tags": '{"x": 1}',
        }
    finally:
        await database.close()


def test_updates_name_only_the_tables_columns() -> None:
    """SQL is written with a table's own column names, never a caller's keyword."""
    from devbox_service.devboxes.store import DEVBOXES

    assert DEVBOXES.encode_partial({"status": "ready", "ssh_token_hash": "h"})
    with pytest.raises(ValueError, match="no column status = 'x'; --"):
        DEVBOXES.encode_partial({"status = 'x'; --": 1})
