"""Notification wire shapes (the record is the response: nothing in it is private)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


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
