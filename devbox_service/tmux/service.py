"""tmux automation inside devboxes: the rules, over two ports (`ports.py`).

Who may use which guest, and where it is, comes from `DevboxAccess` (the devbox service); tmux
inside a guest from a `TmuxGuest` adapter (`remote.py`, over SSH), one per devbox, opened on
first use and closed when the devbox is destroyed. Both raise only domain errors, and this
module imports no SSH or tmux library.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Failed
from devbox_service.tmux import models
from devbox_service.tmux.keys import plan, target_name
from devbox_service.tmux.pane import GUEST_PANE_ID, GUEST_SESSION_ID, Pane
from devbox_service.tmux.ports import DevboxAccess, OpenGuest, TmuxGuest

TRANSPORT = (
    "ssh: libtmux via OpenSSH ControlMaster wrapper (sessions); "
    "tmux -C control mode over asyncssh (send-keys, snapshots, stream, wait)"
)
DEFAULT_SEND_TIMEOUT_MS = 5000
INSTALL_SCRIPT = (
    "command -v tmux >/dev/null || { export DEBIAN_FRONTEND=noninteractive; "
    "apt-get install -y -q tmux >/dev/null 2>&1 || "
    "{ apt-get update -q && apt-get install -y -q tmux; } >/dev/null; }; tmux -V"
)
DEBUG_SCRIPT = (
    'id -un; id -u; tmux -V 2>/dev/null || echo; echo "${TMUX_TMPDIR:-}"; '
    'ls -1 "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)" 2>/dev/null'
)
MAX_PANES = 100
"""Panes a devbox page lists at most (a guest may report any number)."""


class TmuxService:
    def __init__(self, devboxes: DevboxAccess, open_guest: OpenGuest) -> None:
        self._access = devboxes
        self._open_guest = open_guest
        self._guests: dict[str, tuple[SSHEndpoint, TmuxGuest]] = {}
        self._installed: set[str] = set()
        devboxes.on_destroy(self._forget)

    @property
    def guest_count(self) -> int:
        """Guests with a tmux connection open now (for /metrics)."""
        return len(self._guests)

    # plumbing

    async def _guest(self, principal: Principal, devbox_id: str, act: Act) -> TmuxGuest:
        """The devbox's adapter, once the policy allows `act` (WATCH reads, TYPE changes);
        a new adapter when the guest moved."""
        endpoint = await self._access.guest_endpoint(principal, devbox_id, act)
        known = self._guests.get(devbox_id)
        if known is not None and known[0] == endpoint:
            return known[1]
        if known is not None:
            await known[1].close()
        guest = self._open_guest(devbox_id, endpoint)
        self._guests[devbox_id] = (endpoint, guest)
        return guest

    async def _forget(self, devbox_id: str) -> None:
        """Close the devbox's connections when it is destroyed."""
        self._installed.discard(devbox_id)
        known = self._guests.pop(devbox_id, None)
        if known is not None:
            await known[1].close()

    async def close(self) -> None:
        guests, self._guests = list(self._guests.values()), {}
        for _, guest in guests:
            with contextlib.suppress(Exception):
                await guest.close()

    async def _ensure_installed(self, devbox_id: str, guest: TmuxGuest) -> bool:
        if devbox_id in self._installed:
            return True
        if (await guest.exec("command -v tmux >/dev/null", timeout=20)).status != 0:
            return False
        self._installed.add(devbox_id)
        return True

    # sessions

    async def install(self, principal: Principal, devbox_id: str) -> models.TmuxInstallResponse:
        guest = await self._guest(principal, devbox_id, Act.TYPE)
        result = await guest.exec(INSTALL_SCRIPT, timeout=600)
        if result.status != 0:
            raise Failed(f"installing tmux failed: {result.stderr.strip()[-500:]}")
        self._installed.add(devbox_id)
        return models.TmuxInstallResponse(
            installed=True, tmux_version=result.stdout.strip() or None
        )

    async def list_sessions(
        self, principal: Principal, devbox_id: str, socket: str | None
    ) -> tuple[bool, models.TmuxSessionsList]:
        """(tmux installed?, sessions); no tmux or no server is an empty list."""
        guest = await self._guest(principal, devbox_id, Act.WATCH)
        if not await self._ensure_installed(devbox_id, guest):
            return False, models.TmuxSessionsList(data=[])
        return True, models.TmuxSessionsList(data=await guest.list_sessions(socket))

    async def panes(self, principal: Principal, devbox_id: str) -> list[models.TmuxPaneInfo]:
        """Every pane of the default tmux server's sessions (the dashboard's terminal list);
        a line whose ids are not tmux's (`$N`, `%N`) is the guest's invention and skipped."""
        installed, sessions = await self.list_sessions(principal, devbox_id, None)
        if not installed or not sessions.data:
            return []
        names = {s.id: s.name for s in sessions.data}
        guest = await self._guest(principal, devbox_id, Act.WATCH)
        fields = "#{session_id} #{pane_id} #{window_index} #{pane_index} #{pane_current_command}"
        (lines,) = await guest.run(None, [f"list-panes -a -F '{fields}'"])
        panes: list[models.TmuxPaneInfo] = []
        for line in lines:
            session_id, pane_id, window, index, command = (line.split(" ", 4) + [""] * 5)[:5]
            if not (GUEST_SESSION_ID.fullmatch(session_id) and GUEST_PANE_ID.fullmatch(pane_id)):
                continue
            if session_id in names and len(panes) < MAX_PANES:
                panes.append(
                    models.TmuxPaneInfo(
                        id=pane_id,
                        session=names[session_id],
                        window=window,
                        index=index,
                        command=command,
                    )
                )
        return panes

    async def new_session(
        self, principal: Principal, devbox_id: str, name: str, socket: str | None
    ) -> models.TmuxNewSessionResponse:
        guest = await self._guest(principal, devbox_id, Act.TYPE)
        session = await guest.new_session(socket, name)
        return models.TmuxNewSessionResponse(session=session, message=f"created session {name}")

    async def rename_session(
        self, principal: Principal, devbox_id: str, target: str, new_name: str, socket: str | None
    ) -> models.TmuxNewSessionResponse:
        guest = await self._guest(principal, devbox_id, Act.TYPE)
        session = await guest.rename_session(socket, target, new_name)
        return models.TmuxNewSessionResponse(
            session=session, message=f"renamed {target} to {new_name}"
        )

    async def kill_session(
        self, principal: Principal, devbox_id: str, target: str, socket: str | None
    ) -> models.TmuxKillResponse:
        guest = await self._guest(principal, devbox_id, Act.TYPE)
        return models.TmuxKillResponse(killed=await guest.kill_session(socket, target))

    async def debug(self, principal: Principal, devbox_id: str) -> models.TmuxDebugInfoResponse:
        guest = await self._guest(principal, devbox_id, Act.WATCH)
        lines = (await guest.exec(DEBUG_SCRIPT, timeout=20)).stdout.split("\n")
        lines += [""] * (4 - len(lines))
        installed, sessions = await self.list_sessions(principal, devbox_id, None)
        return models.TmuxDebugInfoResponse(
            transport=TRANSPORT,
            user=lines[0] or None,
            uid=lines[1] or None,
            tmux_version=lines[2] or None,
            tmux_env=f"TMUX_TMPDIR={lines[3]}" if lines[3] else None,
            sockets=[s for s in lines[4:] if s],
            sessions=sessions.data if installed else [],
        )

    # keys and screens

    async def send_keys(
        self, principal: Principal, devbox_id: str, request: models.TmuxSendKeysRequest
    ) -> models.TmuxSendKeysResponse:
        """Type text and press keys; every Enter is its own key, checked to have reached the
        pane (its screen or cursor changed) and pressed again if not, until `timeout_ms`."""
        keys = plan(request)
        guest = await self._guest(principal, devbox_id, Act.TYPE)
        if request.pane_id is not None:
            pane = Pane.by_id(guest, request.socket, request.pane_id)
        else:
            assert request.target is not None  # the request's own check
            pane = await Pane.at(guest, request.socket, target_name(request.target))
        timeout_ms = request.timeout_ms or DEFAULT_SEND_TIMEOUT_MS
        deadline = time.monotonic() + timeout_ms / 1000
        ok = await pane.send(keys, pause_ms=request.pause_ms, deadline=deadline)
        return models.TmuxSendKeysResponse(ok=ok, resolved_pane_id=pane.id, sent=keys.describe())

    async def _pane(
        self, principal: Principal, devbox_id: str, pane_id: str, socket: str | None
    ) -> Pane:
        return await Pane.named(await self._guest(principal, devbox_id, Act.WATCH), socket, pane_id)

    async def snapshot(
        self,
        principal: Principal,
        devbox_id: str,
        pane_id: str,
        *,
        lines: int,
        ansi: bool,
        socket: str | None,
    ) -> models.TmuxSnapshotResponse:
        pane = await self._pane(principal, devbox_id, pane_id, socket)
        content = await pane.screen(lines=lines, ansi=ansi)
        return models.TmuxSnapshotResponse(pane_id=pane.id, lines=lines, ansi=ansi, content=content)

    async def wait(
        self, principal: Principal, devbox_id: str, pane_id: str, request: models.TmuxWaitRequest
    ) -> models.TmuxWaitResponse:
        """Until the pattern shows or the screen is still for `idle_ms`; 408 when neither."""
        pane = await self._pane(principal, devbox_id, pane_id, request.socket)
        return await pane.wait(request)

    async def stream(
        self,
        principal: Principal,
        devbox_id: str,
        pane_id: str,
        *,
        socket: str | None,
        debounce_ms: int,
        max_events: int | None,
        timeout_ms: int | None,
        ansi: bool = False,
    ) -> AsyncIterator[models.TmuxPaneEvent]:
        """Check access and the pane now (errors before the stream starts), then stream
        (with colours and attributes as escape sequences when `ansi`)."""
        pane = await self._pane(principal, devbox_id, pane_id, socket)
        session_id = await pane.session_id()
        return pane.stream(session_id, debounce_ms / 1000, max_events, timeout_ms, ansi)
