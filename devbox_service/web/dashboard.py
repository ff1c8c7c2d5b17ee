"""What the dashboard pages show, gathered from the domain services (no HTTP here): rows
of the devbox list, the parts of a devbox page, and the list's live changes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec

from devbox_service.auth.agent_tokens import AgentTokenInfo
from devbox_service.auth.models import Principal
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.devboxes.schemas import HttpService, SnapshotResponse, TimelineEvent
from devbox_service.errors import DevboxServiceError, NotFound, PermissionDenied
from devbox_service.services import Services
from devbox_service.tmux.models import TmuxPaneInfo

WATCH_RECHECK_SECONDS = 15.0
"""A list page re-reads at least this often, so a change made by another process shows."""
TERMINALS_RECHECK_SECONDS = 1.0
"""A devbox page lists its tmux panes again this often (one round trip on the guest's control
client): tmux tells no one when a session starts."""


class DevboxRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    status: DevboxStatus
    error: str | None
    owner: str
    mine: bool
    created_at: float
    memory_mb: int
    vcpus: int
    previews: list[HttpService]


class RowChange(msgspec.Struct, frozen=True, kw_only=True):
    """One devbox's row appeared or changed (`row`), or went away (`row` None)."""

    id: str
    row: DevboxRow | None


class Terminals(msgspec.Struct, frozen=True, kw_only=True):
    """A devbox page's terminals: its tmux panes, or why none are listed."""

    status: DevboxStatus
    panes: list[TmuxPaneInfo]
    note: str | None


class DevboxPage(msgspec.Struct, frozen=True, kw_only=True):
    row: DevboxRow
    timeline: list[TimelineEvent]
    snapshots: list[SnapshotResponse]
    agent_tokens: list[AgentTokenInfo] | None  # None: only the owner manages them
    terminals: Terminals
    may_type: bool
    may_delete: bool


class Dashboard:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def rows(self, principal: Principal) -> list[DevboxRow]:
        records = await self._services.devboxes.records(principal)
        return await self._rows(principal, records)

    async def _rows(self, principal: Principal, records: list[DevboxRecord]) -> list[DevboxRow]:
        names = await self._services.identities.user_names()
        previews = await self._services.previews.http_services_for([r.id for r in records])
        return [
            DevboxRow(
                id=r.id,
                name=r.name,
                status=r.status,
                error=r.error,
                owner=names.get(r.user_id, "(removed user)"),
                mine=r.user_id == principal.user_id,
                created_at=r.created_at,
                memory_mb=r.memory_mb,
                vcpus=r.vcpus,
                previews=previews.get(r.id, []),
            )
            for r in records
        ]

    async def watch(self, principal: Principal) -> AsyncIterator[list[RowChange]]:
        """The list's changes since the page was rendered, as they happen (a first batch
        may repeat what the page shows)."""
        changes = self._services.devboxes.changes
        seen = changes.version
        shown: dict[str, DevboxRow] = {}
        while True:
            rows = {row.id: row for row in await self.rows(principal)}
            batch = [RowChange(id=i, row=row) for i, row in rows.items() if shown.get(i) != row]
            batch += [RowChange(id=i, row=None) for i in shown if i not in rows]
            shown = rows
            if batch:
                yield batch
            seen = await changes.wait(seen, WATCH_RECHECK_SECONDS)

    async def devbox(self, principal: Principal, devbox_id: str) -> DevboxPage:
        services = self._services
        record = await services.devboxes.visible(principal, devbox_id)
        (row,) = await self._rows(principal, [record])
        view = await services.devbox_views.detail(record)
        snapshots = [
            s for s in await services.checkpoints.snapshots(principal) if s.instance_id == record.id
        ]
        agent_tokens: list[AgentTokenInfo] | None = None
        with contextlib.suppress(PermissionDenied):
            agent_tokens = await services.agent_tokens.tokens(principal, devbox_id)
        return DevboxPage(
            row=row,
            timeline=view.timeline,
            snapshots=snapshots,
            agent_tokens=agent_tokens,
            terminals=await self._terminals(principal, record),
            may_type=await services.guest_access.may_type(principal, devbox_id),
            may_delete=row.mine or principal.role.manages_org,
        )

    async def _terminals(self, principal: Principal, record: DevboxRecord) -> Terminals:
        panes: list[TmuxPaneInfo] = []
        note: str | None = None
        if record.status is not DevboxStatus.READY:
            note = f"Terminals show while the devbox is ready (it is {record.status})."
        else:
            try:
                panes = await self._services.tmux.panes(principal, record.id)
            except DevboxServiceError as exc:
                note = f"Could not list its tmux panes: {exc.message}"
            if not panes and note is None:
                note = "No tmux sessions run in this devbox."
        return Terminals(status=record.status, panes=panes, note=note)

    async def watch_terminals(
        self, principal: Principal, devbox_id: str
    ) -> AsyncIterator[Terminals]:
        """A devbox page's terminals whenever they change: sessions started or ended, the
        devbox paused or resumed (the first one may repeat what the page shows). Ends when
        the devbox is gone or the caller no longer sees it."""
        services = self._services
        changes = services.devboxes.changes
        shown: Terminals | None = None
        while True:
            seen = changes.version
            try:
                record = await services.devboxes.visible(principal, devbox_id)
            except NotFound:
                return
            terminals = await self._terminals(principal, record)
            if terminals != shown:
                shown = terminals
                yield terminals
            await changes.wait(seen, TERMINALS_RECHECK_SECONDS)
