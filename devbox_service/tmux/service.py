"""tmux automation inside devboxes: sessions through libtmux, keys and screens through a
control-mode client (see `remote.py` for why two transports), all over SSH into the guest.

libtmux is synchronous, so its calls run in worker threads; the control client is async.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh
import libtmux
from libtmux import exc as tmux_exc

from devbox_service.auth.models import Principal
from devbox_service.backends.base import BackendError
from devbox_service.devboxes.service import DevboxService, require
from devbox_service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unavailable,
)
from devbox_service.ssh.guest import GuestConnections
from devbox_service.tmux.control import CommandError, ControlError, Reply, quote
from devbox_service.tmux.models import (
    MAX_KEYS_BYTES,
    TmuxDebugInfoResponse,
    TmuxInstallResponse,
    TmuxKillResponse,
    TmuxNewSessionResponse,
    TmuxPaneEvent,
    TmuxSendKeysRequest,
    TmuxSendKeysResponse,
    TmuxSession,
    TmuxSessionsList,
    TmuxSnapshotResponse,
    TmuxWaitRequest,
    TmuxWaitResponse,
)
from devbox_service.tmux.remote import CONTROL_SESSION, GuestTmux

T = TypeVar("T")

TRANSPORT = (
    "ssh: libtmux via OpenSSH ControlMaster wrapper (sessions); "
    "tmux -C control mode over asyncssh (send-keys, snapshots, stream, wait)"
)
DEFAULT_SEND_TIMEOUT_MS = 5000
ENTER_FIRST_WINDOW = 0.3  # seconds to see a pane react to Enter before pressing it again
POLL_INTERVAL = 0.01
WAIT_POLL_INTERVAL = 0.05
STREAM_FALLBACK_POLL = 1.0
TEXT_CHUNK = 2000

KEY_NAMES = {
    name.lower(): name
    for name in (
        "Enter Escape Tab BTab BSpace Space Up Down Left Right Home End IC DC NPage PPage "
        "PageUp PageDown PgUp PgDn Insert Delete KPEnter " + " ".join(f"F{n}" for n in range(1, 13))
    ).split()
}
KEY_NAMES["esc"] = "Escape"
KEY_NAMES["return"] = "Enter"
ENTER_KEYS = {"Enter", "KPEnter", "C-m"}
MODIFIED_KEY = re.compile(r"^(?:[CMS]-)+(\S|[A-Za-z][A-Za-z0-9]*)$")
PANE_ID = re.compile(r"^%?(\d+)$")


def key_name(item: str) -> str | None:
    """The tmux key an item of `sequence` names (`ENTER`, `C-c`, `Up`...), or None for text."""
    named = KEY_NAMES.get(item.lower())
    if named is not None:
        return named
    match = MODIFIED_KEY.match(item)
    if match and (len(match.group(1)) == 1 or match.group(1).lower() in KEY_NAMES):
        return item
    return None


def _iso(epoch: str | None) -> str:
    if not epoch or not epoch.isdigit():
        return epoch or ""
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).isoformat()


def _session(session: libtmux.Session) -> TmuxSession:
    return TmuxSession(
        name=session.session_name or "",
        windows=int(session.session_windows or 0),
        clients=int(session.session_attached or 0),
        created=_iso(session.session_created),
        activity=_iso(session.session_activity),
        id=session.session_id or "",
    )


def _find(server: libtmux.Server, target: str) -> libtmux.Session:
    """A session by id (`$N`) or exact name; the service's own control session is hidden."""
    for session in server.sessions:
        if session.session_name == CONTROL_SESSION:
            continue
        if target in (session.session_id, session.session_name):
            return session
    raise NotFound.of("tmux session", target)


class TmuxService:
    def __init__(
        self, devboxes: DevboxService, connections: GuestConnections, runtime_dir: Path
    ) -> None:
        self.devboxes = devboxes
        self.connections = connections
        self.runtime_dir = runtime_dir
        self._guests: dict[str, GuestTmux] = {}
        self._installed: set[str] = set()
        devboxes.on_destroy(self._forget)

    # plumbing

    async def _guest(self, principal: Principal, devbox_id: str) -> GuestTmux:
        record = await self.devboxes.visible(principal, devbox_id)
        require(record, "use")
        try:
            endpoint = (await self.devboxes.backend.get_instance(devbox_id)).ssh
        except BackendError as exc:
            raise Unavailable(f"devbox {devbox_id}: {exc.message}") from exc
        guest = self._guests.get(devbox_id)
        if guest is None or guest.endpoint != endpoint:
            if guest is not None:
                await guest.close()
            guest = GuestTmux(devbox_id, endpoint, self.runtime_dir, self.connections)
            self._guests[devbox_id] = guest
        return guest

    async def _forget(self, devbox_id: str) -> None:
        """Close the devbox's connections and ControlMaster when it is deleted."""
        self._installed.discard(devbox_id)
        guest = self._guests.pop(devbox_id, None)
        if guest is not None:
            await guest.close()

    async def close(self) -> None:
        guests, self._guests = list(self._guests.values()), {}
        for guest in guests:
            with contextlib.suppress(Exception):
                await guest.close()

    async def _run(
        self, guest: GuestTmux, socket: str | None, commands: list[str], timeout: float = 10.0
    ) -> list[Reply]:
        """Commands through the control client; a dead client (restored guest) is replaced
        once, transparently."""
        for attempt in (1, 2):
            try:
                client = await guest.control(socket)
                return await client.run(commands, timeout)
            except (ControlError, asyncssh.Error, OSError, TimeoutError) as exc:
                await guest.reset()
                if attempt == 2:
                    reason = str(exc) or type(exc).__name__
                    raise Unavailable(
                        f"cannot reach tmux in devbox {guest.devbox_id}: {reason}"
                    ) from exc
        raise AssertionError("unreachable")

    async def _command(self, guest: GuestTmux, socket: str | None, command: str) -> list[str]:
        (reply,) = await self._run(guest, socket, [command])
        if not reply.ok:
            raise _tmux_error(CommandError(command, " ".join(reply.lines).strip()))
        return reply.lines

    async def _pane(self, guest: GuestTmux, socket: str | None, target: str) -> str:
        """Resolve a tmux target to a pane id; 404 when tmux cannot find it."""
        lines = await self._command(
            guest, socket, f"display-message -p -t {quote(target)} '#{{pane_id}}'"
        )
        if not lines or not lines[0].startswith("%"):
            raise NotFound.of("tmux pane", target)
        return lines[0]

    async def _pane_id(self, guest: GuestTmux, socket: str | None, pane_id: str) -> str:
        """A pane id as tmux spells it (`%N`); commands on a missing pane fail with 404."""
        match = PANE_ID.match(pane_id)
        if match is None:
            raise NotFound.of("tmux pane", pane_id)
        return f"%{match.group(1)}"

    async def _libtmux(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except tmux_exc.TmuxSessionExists as exc:
            raise Conflict(str(exc) or "session exists") from exc
        except tmux_exc.BadSessionName as exc:
            raise InvalidInput(str(exc)) from exc
        except tmux_exc.LibTmuxException as exc:
            message = str(exc)
            if "duplicate session" in message:
                raise Conflict(message) from exc
            if "can't find" in message:
                raise NotFound(message) from exc
            raise Unavailable(f"tmux failed: {message}") from exc

    async def _ensure_installed(self, guest: GuestTmux) -> bool:
        if guest.devbox_id in self._installed:
            return True
        status, _, _ = await guest.exec("command -v tmux >/dev/null", timeout=20)
        if status == 0:
            self._installed.add(guest.devbox_id)
        return status == 0

    # sessions (libtmux)

    async def install(self, principal: Principal, devbox_id: str) -> TmuxInstallResponse:
        guest = await self._guest(principal, devbox_id)
        script = (
            "command -v tmux >/dev/null || { export DEBIAN_FRONTEND=noninteractive; "
            "apt-get install -y -q tmux >/dev/null 2>&1 || "
            "{ apt-get update -q && apt-get install -y -q tmux; } >/dev/null; }; tmux -V"
        )
        status, out, err = await guest.exec(script, timeout=600)
        if status != 0:
            raise Unavailable(f"installing tmux failed: {err.strip()[-500:]}")
        self._installed.add(devbox_id)
        return TmuxInstallResponse(installed=True, tmux_version=out.strip() or None)

    async def list_sessions(
        self, principal: Principal, devbox_id: str, socket: str | None
    ) -> tuple[bool, TmuxSessionsList]:
        """(tmux installed?, sessions); no tmux or no server is an empty list."""
        guest = await self._guest(principal, devbox_id)
        if not await self._ensure_installed(guest):
            return False, TmuxSessionsList(data=[])
        server = guest.server(socket)
        sessions = await self._libtmux(
            lambda: [_session(s) for s in server.sessions if s.session_name != CONTROL_SESSION]
        )
        return True, TmuxSessionsList(data=sessions)

    async def new_session(
        self, principal: Principal, devbox_id: str, name: str, socket: str | None
    ) -> TmuxNewSessionResponse:
        guest = await self._guest(principal, devbox_id)
        server = guest.server(socket)

        def create() -> TmuxSession:
            if server.has_session(name, exact=True):
                raise Conflict(f"tmux session {name!r} already exists")
            return _session(server.new_session(session_name=name, attach=False))

        session = await self._libtmux(create)
        return TmuxNewSessionResponse(session=session, message=f"created session {name}")

    async def rename_session(
        self, principal: Principal, devbox_id: str, target: str, new_name: str, socket: str | None
    ) -> TmuxNewSessionResponse:
        guest = await self._guest(principal, devbox_id)
        server = guest.server(socket)

        def rename() -> TmuxSession:
            session = _find(server, target)
            if new_name != session.session_name and server.has_session(new_name, exact=True):
                raise Conflict(f"tmux session {new_name!r} already exists")
            session.rename_session(new_name)
            return _session(_find(server, session.session_id or new_name))

        session = await self._libtmux(rename)
        return TmuxNewSessionResponse(session=session, message=f"renamed {target} to {new_name}")

    async def kill_session(
        self, principal: Principal, devbox_id: str, target: str, socket: str | None
    ) -> TmuxKillResponse:
        guest = await self._guest(principal, devbox_id)
        server = guest.server(socket)

        def kill() -> str:
            session = _find(server, target)
            session.kill()
            return session.session_name or target

        return TmuxKillResponse(killed=await self._libtmux(kill))

    async def debug(self, principal: Principal, devbox_id: str) -> TmuxDebugInfoResponse:
        guest = await self._guest(principal, devbox_id)
        script = (
            'id -un; id -u; tmux -V 2>/dev/null || echo; echo "${TMUX_TMPDIR:-}"; '
            'ls -1 "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)" 2>/dev/null'
        )
        _, out, _ = await guest.exec(script, timeout=20)
        lines = out.split("\n")
        lines += [""] * (4 - len(lines))
        installed, sessions = await self.list_sessions(principal, devbox_id, None)
        return TmuxDebugInfoResponse(
            transport=TRANSPORT,
            user=lines[0] or None,
            uid=lines[1] or None,
            tmux_version=lines[2] or None,
            tmux_env=f"TMUX_TMPDIR={lines[3]}" if lines[3] else None,
            sockets=[s for s in lines[4:] if s],
            sessions=sessions.data if installed else [],
        )

    # keys and screens (control mode)

    async def send_keys(
        self, principal: Principal, devbox_id: str, request: TmuxSendKeysRequest
    ) -> TmuxSendKeysResponse:
        """Type text and press keys; every Enter is its own key, checked to have reached the
        pane (its screen or cursor changed) and pressed again if not, until `timeout_ms`."""
        items: list[tuple[str, str]]  # ("text" | "key", value)
        if request.keys is not None:
            size = len(request.keys.encode())
            items = [("text", request.keys)] if request.keys else []
            if request.enter:
                items.append(("key", "Enter"))
        else:
            sequence = request.sequence or []
            size = sum(len(item.encode()) for item in sequence)
            items = []
            for item in sequence:
                key = key_name(item)
                items.append(("key", key) if key else ("text", item))
        if size > MAX_KEYS_BYTES:
            raise PayloadTooLarge(f"keys are {size} bytes; the limit is {MAX_KEYS_BYTES}")
        guest = await self._guest(principal, devbox_id)
        socket = request.socket
        if request.pane_id is not None:
            pane = await self._pane_id(guest, socket, request.pane_id)
        else:
            assert request.target is not None and request.target.session
            target = request.target.session
            if request.target.window is not None or request.target.pane is not None:
                target += ":" + (request.target.window or "")
            if request.target.pane is not None:
                target += "." + request.target.pane
            pane = await self._pane(guest, socket, target)
        timeout_ms = request.timeout_ms or DEFAULT_SEND_TIMEOUT_MS
        deadline = time.monotonic() + timeout_ms / 1000
        literal = bool(request.literal) or request.sequence is not None
        ok = True
        state: str | None = None  # the pane after the previous item, when it was read
        for index, (kind, value) in enumerate(items):
            if index and request.pause_ms:
                await asyncio.sleep(request.pause_ms / 1000)
                state = None
            if kind == "text":
                commands = self._type_commands(pane, value, literal=literal)
                state = await self._pipeline(guest, socket, pane, commands)
            elif value in ENTER_KEYS:
                ok = await self._press_enter(guest, socket, pane, value, deadline, state) and ok
                state = None
            else:
                state = await self._pipeline(
                    guest, socket, pane, [f"send-keys -t {pane} {quote(value)}"]
                )
        sent = " ".join(json.dumps(v, ensure_ascii=False) if k == "text" else v for k, v in items)
        return TmuxSendKeysResponse(ok=ok, resolved_pane_id=pane, sent=sent)

    STATE_COMMANDS = (
        "capture-pane -p -t {pane}",
        "display-message -p -t {pane} '#{{cursor_x}},#{{cursor_y}},#{{history_size}}'",
    )

    async def _pipeline(
        self, guest: GuestTmux, socket: str | None, pane: str, commands: list[str]
    ) -> str:
        """Run `commands` then read the pane's state (screen and cursor), all in one write:
        one round trip however many commands."""
        state = [c.format(pane=pane) for c in self.STATE_COMMANDS]
        replies = await self._run(guest, socket, [*commands, *state])
        for reply, command in zip(replies, [*commands, *state], strict=True):
            if not reply.ok:
                raise _tmux_error(CommandError(command, " ".join(reply.lines)))
        return "\n".join(replies[-2].lines + replies[-1].lines)

    def _type_commands(self, pane: str, text: str, *, literal: bool) -> list[str]:
        if not literal:
            return [f"send-keys -t {pane} -- {quote(text)}"]  # a key name must stay whole
        chunks = [text[i : i + TEXT_CHUNK] for i in range(0, len(text), TEXT_CHUNK)]
        return [f"send-keys -l -t {pane} -- {quote(chunk)}" for chunk in chunks]

    async def _press_enter(
        self,
        guest: GuestTmux,
        socket: str | None,
        pane: str,
        key: str,
        deadline: float,
        before: str | None,
    ) -> bool:
        if before is None:
            before = await self._pipeline(guest, socket, pane, [])
        window = ENTER_FIRST_WINDOW
        while True:
            state = await self._pipeline(guest, socket, pane, [f"send-keys -t {pane} {key}"])
            attempt_end = min(deadline, time.monotonic() + window)
            while state == before and time.monotonic() < attempt_end:
                await asyncio.sleep(POLL_INTERVAL)
                state = await self._pipeline(guest, socket, pane, [])
            if state != before:
                return True
            if time.monotonic() >= deadline:
                return False
            window *= 2

    async def _screen(
        self, guest: GuestTmux, socket: str | None, pane: str, lines: int = 0, ansi: bool = False
    ) -> str:
        flags = "-p" + (" -e" if ansi else "") + (f" -S -{lines}" if lines else "")
        captured = await self._command(guest, socket, f"capture-pane {flags} -t {pane}")
        while captured and not captured[-1].strip():
            captured.pop()
        if lines:
            captured = captured[-lines:]
        return "\n".join(captured)

    async def snapshot(
        self,
        principal: Principal,
        devbox_id: str,
        pane_id: str,
        *,
        lines: int,
        ansi: bool,
        socket: str | None,
    ) -> TmuxSnapshotResponse:
        guest = await self._guest(principal, devbox_id)
        pane = await self._pane_id(guest, socket, pane_id)
        content = await self._screen(guest, socket, pane, lines=lines, ansi=ansi)
        return TmuxSnapshotResponse(pane_id=pane, lines=lines, ansi=ansi, content=content)

    async def wait(
        self, principal: Principal, devbox_id: str, pane_id: str, request: TmuxWaitRequest
    ) -> TmuxWaitResponse:
        """Poll the screen through the control client (no spawns) until the pattern shows or
        the screen has been still for `idle_ms`; 408 (Timeout) when neither happens in time."""
        guest = await self._guest(principal, devbox_id)
        socket = request.socket
        pane = await self._pane_id(guest, socket, pane_id)
        pattern = re.compile(request.pattern, re.MULTILINE) if request.pattern else None
        start = last_change = time.monotonic()
        last: str | None = None
        while True:
            content = await self._screen(guest, socket, pane)
            now = time.monotonic()
            elapsed = int((now - start) * 1000)
            if pattern is not None and (found := pattern.search(content)):
                return TmuxWaitResponse(
                    pane_id=pane,
                    condition="pattern",
                    content=content,
                    elapsed_ms=elapsed,
                    match=found.group(0),
                )
            if content != last:
                last, last_change = content, now
            elif request.idle_ms is not None and (now - last_change) * 1000 >= request.idle_ms:
                return TmuxWaitResponse(
                    pane_id=pane, condition="idle", content=content, elapsed_ms=elapsed
                )
            if elapsed >= request.timeout_ms:
                wanted = [f"match /{request.pattern}/"] if request.pattern else []
                if request.idle_ms is not None:
                    wanted.append(f"stay idle for {request.idle_ms} ms")
                raise Timeout(
                    f"pane {pane} did not {' or '.join(wanted)} within {request.timeout_ms} ms"
                )
            await asyncio.sleep(WAIT_POLL_INTERVAL)

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
    ) -> AsyncIterator[TmuxPaneEvent]:
        """Check access and the pane now (errors before the stream starts), then stream."""
        guest = await self._guest(principal, devbox_id)
        pane = await self._pane_id(guest, socket, pane_id)
        (session_id,) = await self._command(
            guest, socket, f"display-message -p -t {pane} '#{{session_id}}'"
        )
        return self._stream(
            guest, socket, pane, session_id, debounce_ms / 1000, max_events, timeout_ms
        )

    async def _stream(
        self,
        guest: GuestTmux,
        socket: str | None,
        pane: str,
        session_id: str,
        debounce: float,
        max_events: int | None,
        timeout_ms: int | None,
    ) -> AsyncIterator[TmuxPaneEvent]:
        """The pane's screen whenever it changes: a read-only control client attached to the
        pane's session reports `%output`, which triggers a capture after `debounce`; a slow
        poll covers changes without output and a watcher that could not attach."""
        changed = asyncio.Event()
        prefixes = (f"%output {pane} ", f"%extended-output {pane} ", "%layout-change ")

        def notice(line: str) -> None:
            if line.startswith(prefixes):
                changed.set()

        watcher = None
        with contextlib.suppress(asyncssh.Error, OSError, ControlError):
            watcher = await guest.watch(socket, session_id, notice)
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        last: str | None = None
        seq = 0
        try:
            while True:
                changed.clear()
                try:
                    content = await self._screen(guest, socket, pane)
                except NotFound:
                    return  # the pane is gone: the stream ends
                if content != last:
                    last, seq = content, seq + 1
                    yield TmuxPaneEvent(pane_id=pane, content=content, seq=seq, ts=time.time())
                    if max_events is not None and seq >= max_events:
                        return
                poll = STREAM_FALLBACK_POLL if watcher and not watcher.closed else 0.25
                if deadline is not None:
                    poll = min(poll, deadline - time.monotonic())
                    if poll <= 0:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), poll)
                    await asyncio.sleep(debounce)
        finally:
            if watcher is not None:
                await watcher.aclose()


def _tmux_error(error: CommandError) -> Exception:
    if "can't find" in error.message or "no such" in error.message.lower():
        return NotFound(f"tmux: {error.message}")
    return InvalidInput(f"tmux refused: {error.message}")
