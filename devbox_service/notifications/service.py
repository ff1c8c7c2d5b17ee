"""Notifications: posted for a devbox (by its agent or a user), read by the devbox's owner."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from devbox_service.auth.models import Principal
from devbox_service.db import Database, Row
from devbox_service.devboxes.service import DevboxService
from devbox_service.errors import NotFound
from devbox_service.ids import new_id


class NotificationCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    body: Annotated[str, Meta(max_length=10000)] = ""
    level: Literal["info", "success", "warning", "error"] = "info"


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    devbox_id: str | None
    title: str
    body: str
    level: str
    created_at: float
    read_at: float | None


class NotificationList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[Notification]


def _notification(row: Row) -> Notification:
    return Notification(
        id=row["id"],
        devbox_id=row["devbox_id"],
        title=row["title"],
        body=row["body"],
        level=row["level"],
        created_at=row["created_at"],
        read_at=row["read_at"],
    )


class NotificationService:
    def __init__(self, database: Database, devboxes: DevboxService) -> None:
        self.database = database
        self.devboxes = devboxes

    async def post(
        self, principal: Principal, devbox_id: str, request: NotificationCreate
    ) -> Notification:
        """Addressed to the devbox's owner, whoever in the org (or its agent) posts it."""
        record = await self.devboxes.visible(principal, devbox_id)
        notification = Notification(
            id=new_id("notification"),
            devbox_id=devbox_id,
            title=request.title,
            body=request.body,
            level=request.level,
            created_at=time.time(),
            read_at=None,
        )
        await self.database.execute(
            "INSERT INTO notifications (id, user_id, devbox_id, title, body, level, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                notification.id,
                record.user_id,
                devbox_id,
                notification.title,
                notification.body,
                notification.level,
                notification.created_at,
            ),
        )
        return notification

    async def list(self, principal: Principal) -> list[Notification]:
        rows = await self.database.fetch_all(
            "SELECT * FROM notifications WHERE user_id = ? "
            "ORDER BY read_at IS NOT NULL, created_at DESC LIMIT 500",
            (principal.user_id,),
        )
        return [_notification(r) for r in rows]

    async def mark_read(self, principal: Principal, notification_id: str) -> Notification:
        await self.database.execute(
            "UPDATE notifications SET read_at = COALESCE(read_at, ?) WHERE id = ? AND user_id = ?",
            (time.time(), notification_id, principal.user_id),
        )
        row = await self.database.fetch_one(
            "SELECT * FROM notifications WHERE id = ? AND user_id = ?",
            (notification_id, principal.user_id),
        )
        if row is None:
            raise NotFound.of("notification", notification_id)
        return _notification(row)
