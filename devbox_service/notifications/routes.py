"""Notification routes: post for a devbox, list and mark read for the user."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from devbox_service.auth.guards import (
    USER,
    CurrentPrincipal,
    allow,
    on_devbox,
)
from devbox_service.auth.policy import Act
from devbox_service.notifications.models import (
    Notification,
    NotificationCreate,
    NotificationList,
)
from devbox_service.notifications.service import NotificationService


class DevboxNotificationController(Controller):
    path = "/api/devboxes/{devbox_id:str}/notifications"
    tags = ["notifications"]

    @post(
        "/",
        guards=[allow(on_devbox(Act.NOTIFY))],
        status_code=200,
        summary="Post a notification for a devbox",
    )
    async def post_notification(
        self,
        notifications: NamedDependency[NotificationService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[NotificationCreate],
    ) -> Notification:
        return await notifications.post(principal, devbox_id, data)


class NotificationController(Controller):
    path = "/api/notifications"
    tags = ["notifications"]

    @get("/", guards=[allow(USER)], summary="List notifications (unread first)")
    async def list_notifications(
        self, notifications: NamedDependency[NotificationService], principal: CurrentPrincipal
    ) -> NotificationList:
        return NotificationList(data=await notifications.list(principal))

    @post(
        "/{notification_id:str}/read",
        guards=[allow(USER)],
        status_code=200,
        summary="Mark a notification read",
    )
    async def mark_read(
        self,
        notifications: NamedDependency[NotificationService],
        principal: CurrentPrincipal,
        notification_id: FromPath[str],
    ) -> Notification:
        return await notifications.mark_read(principal, notification_id)
