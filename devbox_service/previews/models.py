"""Exposed HTTP services: the stored record and the request that creates one."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta

from devbox_service.backends.base import PortForward

# The contract's pattern (HttpExposeRequest.name), checked again with `fullmatch` in the
# service: msgspec uses `re.search`, where `$` also matches before a trailing newline.
NAME_PATTERN = "^[a-z0-9]([a-z0-9-_]*[a-z0-9])?$"
NAME_MAX_LENGTH = 40


class HttpServiceAuthMode(enum.StrEnum):
    NONE = "none"  # anyone with the URL
    API_KEY = "api_key"  # a bearer key that may access the devbox


class HttpExposeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    auth_mode: HttpServiceAuthMode | None = HttpServiceAuthMode.NONE  # null means "none"


class ExposedService(msgspec.Struct, frozen=True, kw_only=True):
    devbox_id: str
    name: str
    port: int
    host_port: int
    auth_mode: HttpServiceAuthMode
    created_at: float


class PreviewTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where one proxied request goes, and whether its Authorization header was ours."""

    service: ExposedService
    upstream: PortForward
    consumed_authorization: bool
