"""Aliases: the stored record and the wire shapes the contract names."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

ALIAS_PATTERN = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
Alias = Annotated[str, Meta(pattern=ALIAS_PATTERN, max_length=64)]


class Visibility(enum.StrEnum):
    ORG = "org"  # members of the template's organization
    PUBLIC = "public"  # every user of the service (starting a devbox still needs an account)


class AliasRecord(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    template_id: str
    org_id: str
    user_id: str
    description: str | None
    visibility: Visibility
    created_at: float
    updated_at: float


class TemplateShareRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: Alias
    description: Annotated[str, Meta(max_length=2000)] | None = None
    visibility: Visibility = Visibility.ORG  # beyond the contract


class TemplateShareResponse(msgspec.Struct, frozen=True, kw_only=True):
    url: str


class AliasResponse(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    base_snapshot_id: str
    template: str  # the template's YAML
    template_id: str | None
    description: str | None
    created_at: str
    updated_at: str
    content_hash: str | None
    visibility: Visibility


class AliasList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[AliasResponse]


class StepPreview(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    type: str


class AliasSearchItem(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    template_id: str
    description: str | None
    step_count: int
    match_count: int
    tags: list[str]
    steps_preview: list[StepPreview] | None = None


class AliasSearchResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[AliasSearchItem]


Match = Literal["any", "all"]
