"""tmux wire shapes: the contract's Tmux* schemas, plus the stream and wait extensions.

Cross-field rules live in `__post_init__`: msgspec turns the ValueError into a validation
error, which the app answers with 422 like any other malformed body.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from devbox_service.tmux.patterns import MAX_CHARS, check_bounds

MAX_KEYS_BYTES = 64 * 1024

SessionName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[^:.\x00-\x1f]+$",
        description="tmux session name: not empty, no ':' or '.'",
    ),
]
Socket = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./@+-]+$")]
Millis = Annotated[int, Meta(ge=0, le=600_000)]


class TmuxSession(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    windows: int
    clients: int
    created: str
    activity: str
    id: str


class TmuxPaneInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    session: str
    window: str
    index: str
    command: str


class TmuxSessionsList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[TmuxSession]
    object: str = "list"


class TmuxInstallResponse(msgspec.Struct, frozen=True, kw_only=True):
    installed: bool
    ok: bool = True
    tmux_version: str | None = None


class TmuxNewSessionRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: SessionName
    detached: bool | None = True
    socket: Socket | None = None


class TmuxNewSessionResponse(msgspec.Struct, frozen=True, kw_only=True):
    session: TmuxSession
    message: str | None = None


class TmuxRenameRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    new_name: SessionName
    socket: Socket | None = None


class TmuxKillResponse(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool = True
    killed: str


class TmuxTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    session: str | None = None
    window: str | None = None
    pane: str | None = None


class TmuxSendKeysRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pane_id: str | None = None
    keys: str | None = None
    enter: bool | None = False
    target: TmuxTarget | None = None
    socket: Socket | None = None
    sequence: list[str] | None = None
    literal: bool | None = False
    pause_ms: Millis | None = None
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None

    def __post_init__(self) -> None:
        if self.keys is None and self.sequence is None:
            raise ValueError("give `keys` or `sequence`")
        if self.keys is not None and self.sequence is not None:
            raise ValueError("give `keys` or `sequence`, not both")
        if self.pane_id is None and (self.target is None or not self.target.session):
            raise ValueError("give `pane_id` or `target` with a `session`")


class TmuxSendKeysResponse(msgspec.Struct, frozen=True, kw_only=True):
    resolved_pane_id: str
    sent: str
    ok: bool = True


class TmuxSnapshotResponse(msgspec.Struct, frozen=True, kw_only=True):
    pane_id: str
    lines: int
    content: str
    ansi: bool = False


class TmuxDebugInfoResponse(msgspec.Struct, frozen=True, kw_only=True):
    transport: str
    user: str | None = None
    uid: str | None = None
    tmux_version: str | None = None
    tmux_env: str | None = None
    sockets: list[str] = msgspec.field(default_factory=list)
    sessions: list[TmuxSession] = msgspec.field(default_factory=list)


class TmuxWaitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Wait until the pane's screen matches `pattern` or stays unchanged for `idle_ms`."""

    pattern: Annotated[str, Meta(min_length=1, max_length=MAX_CHARS)] | None = None
    idle_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 30_000
    socket: Socket | None = None

    def __post_init__(self) -> None:
        if self.pattern is None and self.idle_ms is None:
            raise ValueError("give `pattern` or `idle_ms` (or both)")
        if self.pattern is not None:
            check_bounds(
                self.pattern
            )  # cheap, from the text; compiling is the wait's, off the loop


class TmuxWaitResponse(msgspec.Struct, frozen=True, kw_only=True):
    pane_id: str
    condition: str  # "pattern" or "idle"
    content: str
    elapsed_ms: int
    match: str | None = None


class TmuxPaneEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One server-sent event of `/panes/{pane_id}/stream`: the screen after a change."""

    pane_id: str
    content: str
    seq: int
    ts: float
