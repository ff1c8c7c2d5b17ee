"""Template records: what the store keeps (wire shapes are in `schemas`)."""

from __future__ import annotations

import enum

import msgspec


class TemplateStatus(enum.StrEnum):
    DRAFT = "draft"  # never built
    CACHING = "caching"  # a run is under way
    READY = "ready"  # the last run completed: final_snapshot_id boots the whole template
    FAILED = "failed"  # the last run failed; the cached prefix is kept


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    AWAITING_INPUT = "awaiting_input"
    COMPLETED = "completed"
    FAILED = "failed"  # a step failed
    CANCELLED = "cancelled"
    ERROR = "error"  # the run itself broke (a restart, the backend)

    @property
    def active(self) -> bool:
        return self in (RunStatus.RUNNING, RunStatus.AWAITING_INPUT)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    EXECUTING = "executing"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"


class TemplateRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    user_id: str
    name: str
    description: str | None
    yaml: str
    base_snapshot_id: str  # as the user gave it: an image id or a snapshot id
    content_hash: str
    status: TemplateStatus
    final_snapshot_id: str | None
    run_id: str | None
    created_at: float
    updated_at: float
    spec_json: str | None = None  # the parsed spec (`spec.encode_spec`); None: not yet stored


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    template_id: str
    user_id: str
    status: RunStatus
    build_devbox_id: str | None = None
    current_index: int | None = None
    failed_index: int | None = None
    error: str | None = None
    final_snapshot_id: str | None = None
    devbox_id: str | None = None  # the devbox the user got
    created_at: float
    finished_at: float | None = None
