"""Wire shapes of the template routes, as the contract names them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from devbox_service.devbox_templates.models import StepStatus, TemplateStatus

Yaml = Annotated[str, Meta(min_length=1)]  # the size limit is checked by the parser (413)
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=10000)]
SnapshotRef = Annotated[str, Meta(min_length=1, max_length=200)]


class TemplateCreateRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    yaml: Yaml
    description: Description | None = None
    baseSnapshotOption: SnapshotRef


class TemplateUpdateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Every field optional; null means unchanged."""

    name: Name | None = None
    yaml: Yaml | None = None
    description: Description | None = None
    baseSnapshotOption: SnapshotRef | None = None


class TemplateStepModel(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    index: int
    type: str
    title: str | None
    command: str | None = None
    http_service: dict[str, Any] | None = None
    export_secret: dict[str, Any] | None = None
    tmux_session: dict[str, Any] | None = None  # beyond the contract: the CLI's runner reads it
    fingerprint: str | None = None
    status: StepStatus
    snapshot_id: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float


class TemplateSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    description: str | None
    status: TemplateStatus
    step_count: int
    cached_step_count: int
    updated_at: float


class TemplateDetail(TemplateSummary, frozen=True, kw_only=True):
    user_id: str
    yaml: str
    base_snapshot_id: str
    content_hash: str
    final_snapshot_id: str | None
    run_id: str | None
    created_at: float
    steps: list[TemplateStepModel]


class TemplateListResponse(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[TemplateSummary]


HandoffAction = Literal["pause", "stop"]


class TemplateCacheRequest(msgspec.Struct, frozen=True, kw_only=True):
    runtime_secrets: dict[str, str] | None = None
    workflow_context: dict[str, Any] | None = None
    force: bool | None = None
    base_devbox_id: str | None = None
    base_snapshot_id: str | None = None
    handoff_ttl_seconds: Annotated[int, Meta(gt=0)] | None = None
    handoff_ttl_action: HandoffAction | None = None


class TemplateCacheStartResponse(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str


SecretName = Annotated[str, Meta(min_length=1, max_length=128)]


class InstantDevboxRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None
    metadata: dict[str, Any] | None = None
    handoff_ttl_seconds: Annotated[int, Meta(gt=0)] | None = None
    handoff_ttl_action: HandoffAction | None = None
    # beyond the contract: which of the caller's saved secrets the devbox gets (names the
    # template exports). Omitted: all of them for the template's author, none for anyone else
    # (the template's processes, which its author wrote, can read them in the devbox).
    inject_secrets: Annotated[list[SecretName], Meta(max_length=200)] | None = None


AvailabilityReason = Literal["not_ready", "requires_build", "forbidden"]


class InstantDevboxAvailability(msgspec.Struct, frozen=True, kw_only=True):
    template_id: str
    available: bool
    reason: AvailabilityReason | None = None
