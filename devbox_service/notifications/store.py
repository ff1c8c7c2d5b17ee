"""SQL for notifications (the `notifications` table)."""

from __future__ import annotations

import time

from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.notifications.models import Notification

NOTIFICATIONS = Table("notifications", Notification, extra_columns=["user_id"])
LIST_LIMIT = 500


class NotificationStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def insert(self, notification: Notification, *, user_id: str) -> None:
        async with self.database.transaction() as tx:
            await NOTIFICATIONS.insert(tx, notification, user_id=user_id)

    async def for_user(self, user_id: str) -> list[Notification]:
        """Unread first, newest first."""
        rows = await self.database.fetch_all(
            "SELECT * FROM notifications WHERE user_id = ? "
            "ORDER BY read_at IS NOT NULL, created_at DESC LIMIT ?",
            (user_id, LIST_LIMIT),
        )
        return NOTIFICATIONS.decode_all(rows)

    async def mark_read(self, user_id: str, notification_id: str) -> Notification | None:
        """Marks it read once (a second call keeps the first time); None if not the user's."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "UPDATE notifications SET read_at = COALESCE(read_at, ?) "
                "WHERE id = ? AND user_id = ?",
                (time.time(), notification_id, user_id),
            )
            row = await tx.fetch_one(
                "SELECT * FROM notifications WHERE id = ? AND user_id = ?",
                (notification_id, user_id),
            )
        return NOTIFICATIONS.decode(row) if row else None
