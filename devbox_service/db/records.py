"""Rows to Structs and back, declared once per table instead of hand-written per column.

`msgspec.convert` turns a row (as a dict) into its Struct: enums, bools stored as 0/1 and
optional fields are converted by msgspec, and columns the Struct does not name (secrets'
hashes, say) are ignored. JSON columns are named once and decoded/encoded here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from devbox_service.db.database import Database, Row, Transaction

T = TypeVar("T", bound=msgspec.Struct)


class Table(Generic[T]):
    """One table whose rows are `record_type`; `json_columns` hold JSON text. Its columns
    are a closed set, the Struct's fields plus `extra_columns` (hashes no Struct carries):
    SQL is only ever written with those names, never with a caller's keyword."""

    def __init__(
        self,
        name: str,
        record_type: type[T],
        *,
        json_columns: Iterable[str] = (),
        extra_columns: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.record_type = record_type
        self.json_columns = frozenset(json_columns)
        self.columns = frozenset(record_type.__struct_fields__) | frozenset(extra_columns)

    def decode(self, row: Row | Mapping[str, Any]) -> T:
        values = {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)
        for column in self.json_columns & values.keys():
            if values[column] is not None:
                values[column] = json.loads(values[column])
        return msgspec.convert(values, self.record_type, strict=False)

    def decode_all(self, rows: Iterable[Row]) -> list[T]:
        return [self.decode(row) for row in rows]

    def encode(self, record: T, **extra: object) -> dict[str, Any]:
        """Column values of a record (enums as their values, JSON columns as text)."""
        values: dict[str, Any] = msgspec.to_builtins(record)
        values.update(extra)
        return self.encode_partial(values)

    def encode_partial(self, values: Mapping[str, object]) -> dict[str, Any]:
        """Some columns' values, encoded as `encode` would (for UPDATE statements).
        Raises ValueError for a name that is not one of the table's columns."""
        unknown = set(values) - self.columns
        if unknown:
            raise ValueError(f"{self.name} has no column {', '.join(sorted(unknown))}")
        encoded: dict[str, Any] = msgspec.to_builtins(dict(values))
        for column in self.json_columns & encoded.keys():
            if encoded[column] is not None:
                encoded[column] = json.dumps(encoded[column])
        return encoded

    async def insert(
        self,
        tx: Transaction,
        record: T,
        *,
        upsert_on: tuple[str, ...] = (),
        keep: tuple[str, ...] = (),
        **extra: object,
    ) -> None:
        """INSERT the record (plus `extra` columns); with `upsert_on`, a row with the same
        key columns is updated instead, except for the columns in `keep`."""
        values = self.encode(record, **extra)
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        sql = f"INSERT INTO {self.name} ({columns}) VALUES ({marks})"
        if upsert_on:
            fixed = set(upsert_on) | set(keep)
            updates = ", ".join(f"{c} = excluded.{c}" for c in values if c not in fixed)
            sql += f" ON CONFLICT ({', '.join(upsert_on)}) DO UPDATE SET {updates}"
        await tx.execute(sql, tuple(values.values()))


async def rows_by_devbox(
    database: Database, table: str, order: str, devbox_ids: Sequence[str]
) -> dict[str, list[Row]]:
    """One query for the rows of many devboxes, grouped by devbox (every id present)."""
    found: dict[str, list[Row]] = {i: [] for i in devbox_ids}
    if devbox_ids:
        marks = ",".join("?" * len(devbox_ids))
        rows = await database.fetch_all(
            f"SELECT * FROM {table} WHERE devbox_id IN ({marks}) ORDER BY {order}",
            list(devbox_ids),
        )
        for row in rows:
            found[row["devbox_id"]].append(row)
    return found
