"""One pane, through the guest's control client: typing into it and reading its screen.

Every call is a batch of tmux commands in one round trip (`TmuxGuest.run`); nothing here
spawns a process in the guest. Sending checks each Enter reached the pane; waiting and
streaming poll the screen, streaming woken early by the session's `%output` notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

from devbox_service.errors import NotFound, Timeout, Unreachable
from devbox_service.tmux.control import quote
from devbox_service.tmux.keys import ENTER_KEYS, KeysPlan, key_command, text_commands
from devbox_service.tmux.models import TmuxPaneEvent, TmuxWaitRequest, TmuxWaitResponse
from devbox_service.tmux.patterns import compile_pattern, search
from devbox_service.tmux.ports import TmuxGuest

ENTER_FIRST_WINDOW = 0.3  # seconds to see a pane react to Enter before pressing it again
POLL_INTERVAL = 0.01
WAIT_POLL_INTERVAL = 0.05
STREAM_FALLBACK_POLL = 1.0  # with a watcher attached
STREAM_POLL = 0.25  # without one
PANE_ID = re.compile(r"^%?(\d+)$")
GUEST_PANE_ID = re.compile(r"%\d{1,9}")
"""A pane id as tmux prints it; a guest's answer is checked against it before any use (it
ends up in dashboard URLs and tmux commands)."""
GUEST_SESSION_ID = re.compile(r"\$\d{1,9}")
MAX_TARGET = 256  # characters of a tmux target (`session:window.pane`) in a route

STATE_COMMANDS = (
    "capture-pane -p -t {pane}",
    "display-message -p -t {pane} '#{{cursor_x}},#{{cursor_y}},#{{history_size}}'",
)


class Pane:
    def __init__(self, guest: TmuxGuest, socket: str | None, pane_id: str) -> None:
        self.guest = guest
        self.socket = socket
        self.id = pane_id

    @classmethod
    def by_id(cls, guest: TmuxGuest, socket: str | None, pane_id: str) -> Pane:
        """A pane by id (`%N` or `N`), not checked: commands on a missing pane are NotFound."""
        match = PANE_ID.match(pane_id)
        if match is None:
            raise NotFound.of("tmux pane", pane_id)
        return cls(guest, socket, f"%{match.group(1)}")

    @classmethod
    async def named(cls, guest: TmuxGuest, socket: str | None, name: str) -> Pane:
        """What a pane route's `{pane_id}` names: a pane id (`%N` or `N`), or else a tmux
        target as tmux reads one (`agent`, `agent:0`, `agent:0.1`, `agent:.1`)."""
        if PANE_ID.match(name):
            return cls.by_id(guest, socket, name)
        if len(name) > MAX_TARGET or not name.isprintable():
            raise NotFound.of("tmux pane", name[:MAX_TARGET])
        return await cls.at(guest, socket, name)

    @classmethod
    async def at(cls, guest: TmuxGuest, socket: str | None, target: str) -> Pane:
        """The pane a tmux target (`session[:window[.pane]]`) names now; NotFound if none."""
        command = f"display-message -p -t {quote(target)} '#{{pane_id}}'"
        (lines,) = await guest.run(socket, [command])
        if not lines or not GUEST_PANE_ID.fullmatch(lines[0]):
            raise NotFound.of("tmux pane", target)
        return cls(guest, socket, lines[0])

    async def _run(self, commands: list[str]) -> list[list[str]]:
        return await self.guest.run(self.socket, commands)

    async def state_after(self, commands: list[str]) -> str:
        """Run `commands`, then read the pane's state (screen and cursor), in one round trip."""
        state = [c.format(pane=self.id) for c in STATE_COMMANDS]
        outputs = await self._run([*commands, *state])
        return "\n".join(outputs[-2] + outputs[-1])

    async def screen(self, lines: int = 0, ansi: bool = False) -> str:
        """The visible screen, or its last `lines` lines with history; trailing blanks cut."""
        flags = "-p" + (" -e" if ansi else "") + (f" -S -{lines}" if lines else "")
        (captured,) = await self._run([f"capture-pane {flags} -t {self.id}"])
        while captured and not captured[-1].strip():
            captured.pop()
        if lines:
            captured = captured[-lines:]
        return "\n".join(captured)

    async def session_id(self) -> str:
        (lines,) = await self._run([f"display-message -p -t {self.id} '#{{session_id}}'"])
        if not lines or not GUEST_SESSION_ID.fullmatch(lines[0]):
            raise NotFound.of("tmux pane", self.id)
        return lines[0]

    # typing

    async def send(self, keys: KeysPlan, *, pause_ms: int | None, deadline: float) -> bool:
        """Send the plan's items in order; False when an Enter never reached the pane."""
        ok = True
        state: str | None = None  # the pane after the previous item, when it was read
        for index, (kind, value) in enumerate(keys.items):
            if index and pause_ms:
                await asyncio.sleep(pause_ms / 1000)
                state = None
            if kind == "text":
                state = await self.state_after(text_commands(self.id, value, literal=keys.literal))
            elif value in ENTER_KEYS:
                ok = await self.press_enter(value, deadline, state) and ok
                state = None
            else:
                state = await self.state_after([key_command(self.id, value)])
        return ok

    async def press_enter(self, key: str, deadline: float, before: str | None) -> bool:
        """Press Enter until the pane's state changes (a key typed while the program was not
        reading can be lost), waiting longer each time; False if it never changed."""
        if before is None:
            before = await self.state_after([])
        window = ENTER_FIRST_WINDOW
        while True:
            state = await self.state_after([key_command(self.id, key)])
            attempt_end = min(deadline, time.monotonic() + window)
            while state == before and time.monotonic() < attempt_end:
                await asyncio.sleep(POLL_INTERVAL)
                state = await self.state_after([])
            if state != before:
                return True
            if time.monotonic() >= deadline:
                return False
            window *= 2

    # reading over time

    async def wait(self, request: TmuxWaitRequest) -> TmuxWaitResponse:
        """Poll the screen until the pattern shows or it has been still for `idle_ms`;
        Timeout (408) when neither happens within `timeout_ms`."""
        pattern = await compile_pattern(request.pattern) if request.pattern else None
        start = last_change = time.monotonic()
        last: str | None = None
        while True:
            content = await self.screen()
            now = time.monotonic()
            elapsed = int((now - start) * 1000)
            if pattern is not None and (found := await search(pattern, content)):
                return TmuxWaitResponse(
                    pane_id=self.id,
                    condition="pattern",
                    content=content,
                    elapsed_ms=elapsed,
                    match=found.group(0),
                )
            if content != last:
                last, last_change = content, now
            elif request.idle_ms is not None and (now - last_change) * 1000 >= request.idle_ms:
                return TmuxWaitResponse(
                    pane_id=self.id, condition="idle", content=content, elapsed_ms=elapsed
                )
            if elapsed >= request.timeout_ms:
                wanted = [f"match /{request.pattern}/"] if request.pattern else []
                if request.idle_ms is not None:
                    wanted.append(f"stay idle for {request.idle_ms} ms")
                raise Timeout(
                    f"pane {self.id} did not {' or '.join(wanted)} within {request.timeout_ms} ms"
                )
            await asyncio.sleep(WAIT_POLL_INTERVAL)

    async def stream(
        self,
        session_id: str,
        debounce: float,
        max_events: int | None,
        timeout_ms: int | None,
        ansi: bool = False,
    ) -> AsyncIterator[TmuxPaneEvent]:
        """The screen whenever it changes, until the pane goes away, `max_events` were sent or
        `timeout_ms` passed. A read-only watcher on the pane's session reports `%output`,
        which triggers a capture after `debounce` seconds; a slow poll covers changes without
        output and a watcher that could not attach."""
        changed = asyncio.Event()
        prefixes = (f"%output {self.id} ", f"%extended-output {self.id} ", "%layout-change ")

        def notice(line: str) -> None:
            if line.startswith(prefixes):
                changed.set()

        watcher = None
        with contextlib.suppress(Unreachable):
            watcher = await self.guest.watch(self.socket, session_id, notice)
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        last: str | None = None
        seq = 0
        try:
            while True:
                changed.clear()
                try:
                    content = await self.screen(ansi=ansi)
                except NotFound:
                    return  # the pane is gone: the stream ends
                if content != last:
                    last, seq = content, seq + 1
                    yield TmuxPaneEvent(pane_id=self.id, content=content, seq=seq, ts=time.time())
                    if max_events is not None and seq >= max_events:
                        return
                poll = STREAM_FALLBACK_POLL if watcher and not watcher.closed else STREAM_POLL
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
