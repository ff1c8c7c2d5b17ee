"""The tmux rules against fakes of their two ports: no SSH, no tmux, no VM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest
from support import principal

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import Conflict, NotFound, Timeout
from devbox_service.tmux.models import TmuxSendKeysRequest, TmuxSession, TmuxTarget, TmuxWaitRequest
from devbox_service.tmux.ports import ShellResult, Watcher
from devbox_service.tmux.service import TmuxService

PRINCIPAL = principal()


def endpoint(port: int) -> SSHEndpoint:
    return SSHEndpoint(host="127.0.0.1", port=port, username="root", private_key_path="/k")


class FakeAccess:
    def __init__(self) -> None:
        self.endpoints = {"dbx_1": endpoint(2201)}
        self.listeners: list[Callable[[str], Awaitable[None]]] = []

    async def guest_endpoint(self, principal: Principal, devbox_id: str, act: Act) -> SSHEndpoint:
        if devbox_id not in self.endpoints:
            raise NotFound.of("devbox", devbox_id)
        return self.endpoints[devbox_id]

    def on_destroy(self, listener: Callable[[str], Awaitable[None]]) -> None:
        self.listeners.append(listener)


class FakePane:
    """tmux as far as one pane (`%1` in session `main`) goes: a shell that runs a line on
    Enter, except for the first `deaf_enters` presses, which it misses."""

    def __init__(self) -> None:
        self.screen = ["$ "]
        self.deaf_enters = 0
        self.commands: list[str] = []

    def answer(self, command: str) -> list[str]:
        self.commands.append(command)
        if command.startswith("display-message -p -t \"main\" '#{pane_id}'"):
            return ["%1"]
        if command == "capture-pane -p -t %1":
            return list(self.screen)
        for typing in ("send-keys -l -t %1 -- ", "send-keys -t %1 -- "):
            if command.startswith(typing):
                self.screen[-1] += command.removeprefix(typing).strip('"')
                return []
        if command == 'send-keys -t %1 "Enter"':
            if self.deaf_enters:
                self.deaf_enters -= 1
            else:
                self.screen.append("$ ")
            return []
        if command.startswith("display-message -p -t %1 "):
            return [f"{len(self.screen[-1])},{len(self.screen) - 1},0"]
        if command.startswith("display-message -p -t "):
            raise NotFound(f"tmux display-message: can't find {command.split()[3]}")
        raise AssertionError(f"unexpected command {command!r}")


class FakeGuest:
    def __init__(self, devbox_id: str, at: SSHEndpoint, pane: FakePane) -> None:
        self.devbox_id = devbox_id
        self.endpoint = at
        self.pane = pane
        self.closed = False

    async def list_sessions(self, socket: str | None) -> list[TmuxSession]:
        return []

    async def new_session(self, socket: str | None, name: str) -> TmuxSession:
        raise Conflict(f"tmux session {name!r} already exists")

    async def rename_session(self, socket: str | None, target: str, new_name: str) -> TmuxSession:
        raise NotFound.of("tmux session", target)

    async def kill_session(self, socket: str | None, target: str) -> str:
        return target

    async def run(
        self, socket: str | None, commands: Sequence[str], timeout: float = 10.0
    ) -> list[list[str]]:
        return [self.pane.answer(command) for command in commands]

    async def exec(self, command: str, timeout: float) -> ShellResult:
        return ShellResult(0, "", "")

    async def watch(
        self, socket: str | None, session_id: str, on_notification: Callable[[str], None]
    ) -> Watcher:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True


class Opener:
    def __init__(self) -> None:
        self.pane = FakePane()
        self.opened: list[FakeGuest] = []

    def __call__(self, devbox_id: str, at: SSHEndpoint) -> FakeGuest:
        self.opened.append(FakeGuest(devbox_id, at, self.pane))
        return self.opened[-1]


@pytest.fixture
def access() -> FakeAccess:
    return FakeAccess()


@pytest.fixture
def opener() -> Opener:
    return Opener()


@pytest.fixture
def tmux(access: FakeAccess, opener: Opener) -> TmuxService:
    return TmuxService(access, opener)


async def test_one_adapter_per_guest_replaced_when_it_moves_closed_on_destroy(
    tmux: TmuxService, access: FakeAccess, opener: Opener
) -> None:
    await tmux.list_sessions(PRINCIPAL, "dbx_1", None)
    await tmux.list_sessions(PRINCIPAL, "dbx_1", None)
    assert len(opener.opened) == 1
    first = opener.opened[0]

    access.endpoints["dbx_1"] = endpoint(2202)  # restored elsewhere
    await tmux.list_sessions(PRINCIPAL, "dbx_1", None)
    assert first.closed and len(opener.opened) == 2
    assert opener.opened[1].endpoint == endpoint(2202)

    (forget,) = access.listeners
    await forget("dbx_1")
    assert opener.opened[1].closed
    await forget("dbx_1")  # a second destroy notice is harmless


async def test_access_is_checked_before_any_guest_is_opened(
    tmux: TmuxService, opener: Opener
) -> None:
    with pytest.raises(NotFound, match="dbx_nope"):
        await tmux.new_session(PRINCIPAL, "dbx_nope", "s", None)
    assert opener.opened == []


async def test_adapter_errors_reach_the_caller_unchanged(tmux: TmuxService) -> None:
    with pytest.raises(Conflict, match="'main' already exists"):
        await tmux.new_session(PRINCIPAL, "dbx_1", "main", None)
    with pytest.raises(NotFound, match="tmux session 'x'"):
        await tmux.rename_session(PRINCIPAL, "dbx_1", "x", "y", None)


async def test_send_keys_resolves_the_target_and_presses_enter_until_it_lands(
    tmux: TmuxService, opener: Opener
) -> None:
    opener.pane.deaf_enters = 1
    request = TmuxSendKeysRequest(target=TmuxTarget(session="main"), keys="ls", enter=True)
    response = await tmux.send_keys(PRINCIPAL, "dbx_1", request)
    assert (
        response.ok is True and response.resolved_pane_id == "%1" and response.sent == '"ls" Enter'
    )
    assert opener.pane.screen == ["$ ls", "$ "]
    enters = [c for c in opener.pane.commands if c.endswith('"Enter"')]
    assert len(enters) == 2  # the first was missed, so it was pressed again


async def test_send_keys_reports_an_enter_that_never_lands(
    tmux: TmuxService, opener: Opener
) -> None:
    opener.pane.deaf_enters = 1000
    request = TmuxSendKeysRequest(pane_id="1", keys="ls", enter=True, timeout_ms=200)
    response = await tmux.send_keys(PRINCIPAL, "dbx_1", request)
    assert response.ok is False and response.resolved_pane_id == "%1"


async def test_pane_routes_take_a_pane_id_or_a_tmux_target(
    tmux: TmuxService, opener: Opener
) -> None:
    opener.pane.screen = ["$ echo hi", "hi", "$ "]
    for name in ("%1", "1", "main"):
        shown = await tmux.snapshot(PRINCIPAL, "dbx_1", name, lines=0, ansi=False, socket=None)
        assert (shown.pane_id, shown.content) == ("%1", "$ echo hi\nhi\n$ "), name


async def test_unknown_panes_and_targets_are_not_found(tmux: TmuxService) -> None:
    with pytest.raises(NotFound, match=r"can't find .abc"):
        await tmux.snapshot(PRINCIPAL, "dbx_1", "abc", lines=0, ansi=False, socket=None)
    for unreadable in ("x" * 300, "bad\ntarget"):
        with pytest.raises(NotFound, match="tmux pane"):
            await tmux.snapshot(PRINCIPAL, "dbx_1", unreadable, lines=0, ansi=False, socket=None)
    ghost = TmuxSendKeysRequest(target=TmuxTarget(session="ghost"), keys="x")
    with pytest.raises(NotFound, match="ghost"):
        await tmux.send_keys(PRINCIPAL, "dbx_1", ghost)


async def test_wait_matches_goes_idle_or_times_out(tmux: TmuxService, opener: Opener) -> None:
    opener.pane.screen = ["$ make", "build ok", "$ "]
    matched = await tmux.wait(PRINCIPAL, "dbx_1", "%1", TmuxWaitRequest(pattern="^build (\\w+)$"))
    assert matched.condition == "pattern" and matched.match == "build ok"
    idle = await tmux.wait(PRINCIPAL, "dbx_1", "%1", TmuxWaitRequest(idle_ms=100))
    assert idle.condition == "idle" and idle.content == "$ make\nbuild ok\n$ "
    with pytest.raises(Timeout, match="did not match /never/ within 150 ms"):
        await tmux.wait(PRINCIPAL, "dbx_1", "%1", TmuxWaitRequest(pattern="never", timeout_ms=150))


class HostileGuest(FakeGuest):
    """A guest whose tmux (root in the guest can replace it) invents pane and session ids."""

    async def list_sessions(self, socket: str | None) -> list[TmuxSession]:
        session = TmuxSession(name="main", windows=1, clients=0, created="0", activity="0", id="$1")
        return [session]

    async def run(
        self, socket: str | None, commands: Sequence[str], timeout: float = 10.0
    ) -> list[list[str]]:
        if commands[0].startswith("list-panes"):
            return [
                [
                    "$1 %1 0 0 bash",
                    "$1 %2/../../actions/delete 0 1 bash",
                    "$1 %3?next=x 0 2 bash",
                    "$1 ../4 0 3 bash",
                    "$1/.. %5 0 4 bash",
                ]
            ]
        if commands[0].startswith("display-message"):
            return [["%9/../../keys"]]
        return await super().run(socket, commands, timeout)


async def test_pane_ids_a_hostile_guest_invents_are_never_used(access: FakeAccess) -> None:
    """A pane id ends up in the dashboard's URLs (`../` would aim typing at other routes) and
    in tmux commands: only tmux's own form (`%N`, sessions `$N`) is taken from a guest."""
    pane = FakePane()
    tmux = TmuxService(access, lambda devbox_id, at: HostileGuest(devbox_id, at, pane))
    listed = await tmux.panes(PRINCIPAL, "dbx_1")
    assert [p.id for p in listed] == ["%1"]
    typed = TmuxSendKeysRequest(target=TmuxTarget(session="main"), keys="x")
    with pytest.raises(NotFound, match="tmux pane"):
        await tmux.send_keys(PRINCIPAL, "dbx_1", typed)
    assert pane.commands == [], "nothing was typed into a pane the guest named"
