"""A tmux control-mode (`tmux -C`) client: many tmux commands over one long-lived channel.

Inside a guest under software emulation every process spawn costs ~50 ms, so running one
`tmux` process per command (what libtmux does) dominates latency. A control-mode client is a
single tmux process: each command is one line written to it, answered by a
`%begin ... %end` (or `%error`) block, so a command costs a round trip and no spawn.

Blocks answer our commands in order (tmux runs a client's commands sequentially); a block whose
flags lack bit 1 answers the command the client was started with and is skipped. Lines outside
blocks are notifications (`%output %3 ...`, `%exit`), handed to `on_notification`.

Nothing here knows SSH: the client reads and writes any byte stream. Its errors sit in the
domain tree (`devbox_service.errors`) already, so no caller translates them::

    ControlError             the control client cannot be used            (Unreachable)
     +-- ChannelClosed       the client exited or its channel went away
     +-- CommandTimeout      no answer in time (a paused or dead guest)
    CommandError             tmux answered `%error`: the command itself failed
     +-- TargetNotFound      "can't find pane: %9", "no such session"     (NotFound)
     +-- CommandRefused      any other refusal                            (InvalidInput)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

from devbox_service import errors


class ControlError(errors.Unreachable):
    pass


class ChannelClosed(ControlError):
    pass


class CommandTimeout(ControlError):
    pass


class CommandError(errors.DevboxServiceError):
    """tmux refused a command; `reason` is its error text (e.g. "can't find pane: %9")."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"tmux {command.split(' ', 1)[0]}: {reason}")
        self.command = command
        self.reason = reason

    @staticmethod
    def from_reply(command: str, reason: str) -> CommandError:
        """The error for tmux's answer: a missing target is NotFound, anything else refused."""
        if "can't find" in reason or "no such" in reason.lower():
            return TargetNotFound(command, reason)
        return CommandRefused(command, reason)


class TargetNotFound(CommandError, errors.NotFound):
    pass


class CommandRefused(CommandError, errors.InvalidInput):
    pass


class ByteReader(Protocol):
    async def readline(self) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...


def quote(argument: str) -> str:
    """One tmux command-language token holding `argument` verbatim.

    Double quotes, inside which tmux still expands `$VAR`, a leading `~` and `\\` escapes: so
    `\\`, `"`, `$` and `~` are escaped, and control characters written as octal escapes, which
    keeps a command on one line (control mode reads one command per line).
    """
    out = ['"']
    for char in argument:
        if char in '\\"$~':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


class Reply:
    __slots__ = ("lines", "ok")

    def __init__(self, ok: bool, lines: list[str]) -> None:
        self.ok = ok
        self.lines = lines


class ControlClient:
    """Speaks the control-mode protocol over a reader/writer pair (an SSH channel's stdio)."""

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        on_notification: Callable[[str], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_notification = on_notification
        self._on_close = on_close
        self._pending: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self._closed = asyncio.Event()
        self._task = asyncio.create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def run(self, commands: Sequence[str], timeout: float = 10.0) -> list[Reply]:
        """Send `commands` in one write (pipelined) and wait for all their replies."""
        if self.closed:
            raise ChannelClosed("tmux control client has exited")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._pending.extend(futures)
        try:
            self._writer.write("".join(c + "\n" for c in commands).encode())
        except Exception as exc:
            self._shut()
            raise ChannelClosed(f"cannot write to tmux: {exc}") from exc
        try:
            async with asyncio.timeout(timeout):
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            # Replies are matched by position: one that never came poisons the channel.
            self._shut()
            raise CommandTimeout(f"tmux did not answer within {timeout:g} s") from exc

    async def outputs(self, commands: Sequence[str], timeout: float = 10.0) -> list[list[str]]:
        """Run `commands`; their output lines, or the CommandError of the first one refused
        (tmux still ran the others: each line is a command of its own)."""
        replies = await self.run(commands, timeout)
        for command, reply in zip(commands, replies, strict=True):
            if not reply.ok:
                raise CommandError.from_reply(command, " ".join(reply.lines).strip() or "failed")
        return [reply.lines for reply in replies]

    async def _read_loop(self) -> None:
        block: list[str] | None = None
        block_id = ""
        mine = False
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if block is not None:
                    head, _, rest = line.partition(" ")
                    if head in ("%end", "%error") and rest.rsplit(" ", 1)[0] == block_id:
                        if mine and self._pending:
                            future = self._pending.popleft()
                            if not future.done():
                                future.set_result(Reply(head == "%end", block))
                        block = None
                    else:
                        block.append(line)
                elif line.startswith("%begin "):
                    fields = line.split(" ")
                    block, block_id = [], " ".join(fields[1:3])
                    mine = len(fields) > 3 and fields[3].isdigit() and int(fields[3]) & 1 == 1
                elif line.startswith("%exit"):
                    break
                elif self._on_notification is not None:
                    self._on_notification(line)
        except Exception:  # any transport error ends the client, never the service
            pass
        finally:
            self._shut()

    def _shut(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(ChannelClosed("tmux control client has exited"))
        if self._on_close is not None:
            self._on_close()

    async def aclose(self) -> None:
        self._shut()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
