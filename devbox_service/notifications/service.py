"""Notifications: posted for a devbox (by its agent or a user), read by the devbox's owner."""

from __future__ import annotations

import time

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.devboxes.ports import DevboxVisibility
from devbox_service.errors import NotFound
from devbox_service.ids import new_id
from devbox_service.notifications.models import Notification, NotificationCreate
from devbox_service.notifications.store import NotificationStore


class NotificationService:
    def __init__(self, store: NotificationStore, devboxes: DevboxVisibility) -> None:
        self._store = store
        self._devboxes = devboxes

    async def post(
        self, principal: Principal, devbox_id: str, request: NotificationCreate
    ) -> Notification:
        """Addressed to the devbox's owner, whoever in the org (or its agent) posts it.
        Raises NotFound."""
        record = await self._devboxes.visible(principal, devbox_id, Act.NOTIFY)
        notification = Notification(
            id=new_id("notification"),
            devbox_id=devbox_id,
            title=request.title,
            body=request.body,
            level=request.level,
            created_at=time.time(),
            read_at=None,
        )
        await self._store.insert(notification, user_id=record.user_id)
        return notification

    async def list(self, principal: Principal) -> list[Notification]:
        return await self._store.for_user(principal.user_id)

    async def mark_read(self, principal: Principal, notification_id: str) -> Notification:
        """Raises NotFound (also for another user's notification)."""
        found = await self._store.mark_read(principal.user_id, notification_id)
        if found is None:
            raise NotFound.of("notification", notification_id)
        return found
