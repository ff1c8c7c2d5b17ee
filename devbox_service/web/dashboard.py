"""What the dashboard pages show, gathered from the domain services (no HTTP here): rows
of the devbox list, the parts of a devbox page, and the list's live changes."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator

import msgspec

from devbox_service.auth.agent_tokens import AgentTokenInfo, AgentTokenService
from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, permits
from devbox_service.auth.service import IdentityService
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.devboxes.schemas import HttpService, SnapshotResponse, TimelineEvent
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.views import DevboxViews
from devbox_service.errors import DevboxServiceError, NotFound, PermissionDenied
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.tmux.models import TmuxPaneInfo
from devbox_service.tmux.service import TmuxService

WATCH_RECHECK_SECONDS = 15.0
"""A list page re-reads at least this often, so a change made by another process shows."""
FIRST_SCREENS = 4
"""A devbox page renders this many panes' text at once; the rest fill in from their streams."""
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


class PageAction(enum.StrEnum):
    """The buttons of a devbox page; each calls the service method its API route calls."""

    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    SAVE = "save"
    BRANCH = "branch"
    DELETE = "delete"


class DevboxPage(msgspec.Struct, frozen=True, kw_only=True):
    row: DevboxRow
    timeline: list[TimelineEvent]
    snapshots: list[SnapshotResponse]
    agent_tokens: list[AgentTokenInfo] | None  # None: only the owner manages them
    terminals: Terminals
    screens: dict[str, str]  # the first panes' text, shown before their streams connect
    may_type: bool
    actions: list[PageAction]  # the buttons the policy lets this caller press


ACT_OF = {
    PageAction.PAUSE: Act.OPERATE,
    PageAction.RESUME: Act.OPERATE,
    PageAction.REBOOT: Act.OPERATE,
    PageAction.SAVE: Act.SAVE,
    PageAction.BRANCH: Act.BRANCH,
    PageAction.DELETE: Act.DELETE,
}
"""What each button does in the policy's terms (the service asks the policy again)."""


class Dashboard:
    """The devbox pages' one service: it gathers from the domain services what a page shows
    and runs a page's buttons through the same methods the API routes call."""

    def __init__(
        self,
        *,
        devboxes: DevboxService,
        views: DevboxViews,
        checkpoints: CheckpointService,
        agent_tokens: AgentTokenService,
        guests: GuestAccess,
        tmux: TmuxService,
        identities: IdentityService,
        previews: HttpServiceRegistry,
    ) -> None:
        self._devboxes = devboxes
        self._views = views
        self._checkpoints = checkpoints
        self._agent_tokens = agent_tokens
        self._guests = guests
        self._tmux = tmux
        self._identities = identities
        self._previews = previews

    async def rows(self, principal: Principal) -> list[DevboxRow]:
        records = await self._devboxes.records(principal)
        return await self._rows(principal, records)

    async def record(self, principal: Principal, devbox_id: str) -> DevboxRecord:
        return await self._devboxes.visible(principal, devbox_id, Act.VIEW)

    async def act(self, principal: Principal, devbox_id: str, action: PageAction) -> None:
        match action:
            case PageAction.PAUSE:
                await self._devboxes.pause(principal, devbox_id)
            case PageAction.RESUME:
                await self._devboxes.resume(principal, devbox_id)
            case PageAction.REBOOT:
                await self._devboxes.reboot(principal, devbox_id)
            case PageAction.SAVE:
                await self._checkpoints.save(principal, devbox_id, "")
            case PageAction.BRANCH:
                await self._checkpoints.branch(principal, devbox_id, name=None, count=1)
            case PageAction.DELETE:
                await self._devboxes.delete(principal, devbox_id)

    async def revoke_agent_token(self, principal: Principal, devbox_id: str, token_id: str) -> None:
        await self._agent_tokens.revoke(principal, devbox_id, token_id)

    async def _rows(self, principal: Principal, records: list[DevboxRecord]) -> list[DevboxRow]:
        names = await self._identities.user_names()
        previews = await self._previews.http_services_for([r.id for r in records])
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
        changes = self._devboxes.changes
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
        record = await self._devboxes.visible(principal, devbox_id, Act.VIEW)
        (row,) = await self._rows(principal, [record])
        view = await self._views.detail(record)
        snapshots = [
            s for s in await self._checkpoints.snapshots(principal) if s.instance_id == record.id
        ]
        agent_tokens: list[AgentTokenInfo] | None = None
        with contextlib.suppress(PermissionDenied):
            agent_tokens = await self._agent_tokens.tokens(principal, devbox_id)
        terminals = await self._terminals(principal, record)
        screens = {}
        for pane in terminals.panes[:FIRST_SCREENS]:
            snapshot = await self._tmux.snapshot(
                principal, devbox_id, pane.id, lines=200, ansi=False, socket=None
            )
            screens[pane.id] = snapshot.content
        return DevboxPage(
            row=row,
            timeline=view.timeline,
            snapshots=snapshots,
            agent_tokens=agent_tokens,
            terminals=terminals,
            screens=screens,
            may_type=permits(principal, Act.TYPE, record),
            actions=[a for a in PageAction if permits(principal, ACT_OF[a], record)],
        )

    async def _terminals(self, principal: Principal, record: DevboxRecord) -> Terminals:
        panes: list[TmuxPaneInfo] = []
        note: str | None = None
        if record.status is not DevboxStatus.READY:
            note = f"Terminals show while the devbox is ready (it is {record.status})."
        else:
            try:
                panes = await self._tmux.panes(principal, record.id)
            except DevboxServiceError as exc:
                note = f"Could not list its tmux panes: {exc.message}"
            if not panes and note is None:
                note = "No tmux sessions run in this devbox."
        return Terminals(status=record.status, panes=panes, note=note)

    async def watch_terminals(
        self, principal: Principal, devbox_id: str
    ) -> tuple[bool, AsyncIterator[Terminals]]:
        """Whether the caller may type into this devbox's terminals (NotFound at once for a
        devbox they do not see), and its terminals whenever they change."""
        may_type = await self._guests.may_type(principal, devbox_id)  # NotFound first
        return may_type, self._terminal_changes(principal, devbox_id)

    async def _terminal_changes(
        self, principal: Principal, devbox_id: str
    ) -> AsyncIterator[Terminals]:
        """Sessions started or ended, the devbox paused or resumed (the first one may repeat
        what the page shows). Ends when the devbox is gone or the caller no longer sees it."""
        changes = self._devboxes.changes
        shown: Terminals | None = None
        while True:
            seen = changes.version
            try:
                record = await self._devboxes.visible(principal, devbox_id, Act.WATCH)
            except NotFound:
                return
            terminals = await self._terminals(principal, record)
            if terminals != shown:
                shown = terminals
                yield terminals
            await changes.wait(seen, TERMINALS_RECHECK_SECONDS)
