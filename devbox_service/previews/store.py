"""SQL for exposed HTTP services (the `http_services` table)."""

from __future__ import annotations

from collections.abc import Sequence

from devbox_service.db import Database
from devbox_service.db.records import Table, rows_by_devbox
from devbox_service.previews.models import ExposedService

HTTP_SERVICES = Table("http_services", ExposedService)


class HttpServiceStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def upsert(self, service: ExposedService) -> None:
        """The same name again replaces the service (its port and auth mode)."""
        async with self.database.transaction() as tx:
            await HTTP_SERVICES.insert(tx, service, upsert_on=("devbox_id", "name"))

    async def get(self, devbox_id: str, name: str) -> ExposedService | None:
        row = await self.database.fetch_one(
            "SELECT * FROM http_services WHERE devbox_id = ? AND name = ?", (devbox_id, name)
        )
        return HTTP_SERVICES.decode(row) if row else None

    async def for_devboxes(self, devbox_ids: Sequence[str]) -> dict[str, list[ExposedService]]:
        rows = await rows_by_devbox(self.database, "http_services", "created_at, name", devbox_ids)
        return {devbox_id: HTTP_SERVICES.decode_all(found) for devbox_id, found in rows.items()}

    async def delete(self, devbox_id: str, name: str) -> bool:
        removed = await self.database.execute(
            "DELETE FROM http_services WHERE devbox_id = ? AND name = ?", (devbox_id, name)
        )
        return removed > 0

    async def set_port_mode(self, devbox_id: str, port: int, auth_mode: str) -> None:
        """One auth mode per guest port: every name for it answers alike."""
        await self.database.execute(
            "UPDATE http_services SET auth_mode = ? WHERE devbox_id = ? AND port = ?",
            (auth_mode, devbox_id, port),
        )

    async def set_host_port(self, devbox_id: str, port: int, host_port: int) -> None:
        await self.database.execute(
            "UPDATE http_services SET host_port = ? WHERE devbox_id = ? AND port = ?",
            (host_port, devbox_id, port),
        )
