"""Relays between a user's channel (downstream) and a channel to the guest's sshd (upstream).

Bytes pass through untouched (no encoding), so terminals, the SFTP subsystem and forwarded TCP
all work without the gateway understanding them. Back-pressure is mirrored: when one side's
send buffer fills, reading from the other side pauses, so a slow client never makes the gateway
hold a whole download in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TypeAlias

import asyncssh
from asyncssh.channel import SSHChannel

log = logging.getLogger(__name__)

UPSTREAM_FAILED_STATUS = 255  # what ssh(1) exits with when it cannot reach the host
_Channel: TypeAlias = SSHChannel[bytes]


def _write(chan: _Channel | None, data: bytes, datatype: int | None = None) -> None:
    """Data for a side that is already closing is dropped: nobody is left to read it."""
    if chan is not None:
        with contextlib.suppress(OSError):
            chan.write(data, datatype)


def _write_eof(chan: _Channel | None) -> None:
    if chan is not None:
        with contextlib.suppress(OSError):
            chan.write_eof()


def fail_session(chan: asyncssh.SSHServerChannel[bytes], message: str) -> None:
    """End a user's session the way ssh(1) reports a failed connection: stderr, status 255."""
    _write(chan, f"devbox gateway: {message}\r\n".encode(), asyncssh.EXTENDED_DATA_STDERR)
    with contextlib.suppress(OSError):
        chan.exit(UPSTREAM_FAILED_STATUS)


class ProxySession(asyncssh.SSHServerSession[bytes]):
    """A user's session: records what was asked for (pty, command, subsystem), then opens the
    same on the guest once the request is complete, and relays until either side ends."""

    def __init__(self, upstream: asyncssh.SSHClientConnection, *, timeout: float) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._down: asyncssh.SSHServerChannel[bytes] | None = None
        self._up: asyncssh.SSHClientChannel[bytes] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._term_type: str | None = None
        self._term_size: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._term_modes: Mapping[int, int] = {}
        self._command: str | None = None
        self._subsystem: str | None = None
        self._held: list[bytes] = []
        self._held_eof = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._down = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._term_type, self._term_size, self._term_modes = term_type, term_size, term_modes
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._opening = asyncio.get_running_loop().create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        down = self._down
        assert down is not None
        size = self._term_size
        try:
            async with asyncio.timeout(self._timeout):
                up, _ = await self._upstream.create_session(
                    lambda: _UpstreamSession(down),
                    self._command,
                    subsystem=self._subsystem,
                    term_type=self._term_type,
                    term_size=size if self._term_type else None,
                    term_modes=self._term_modes,
                    encoding=None,
                )
        except TimeoutError:
            fail_session(down, f"the devbox did not start the session within {self._timeout:g}s")
            return
        except (asyncssh.Error, OSError) as exc:
            fail_session(down, f"the devbox refused the session: {exc}")
            return
        except Exception:
            log.exception("SSH gateway could not open a session on the devbox")
            fail_session(down, "internal error while opening the session")
            return
        self._up = up
        if self._down is None:  # the user went away while we waited
            up.close()
            return
        if self._term_type and self._term_size != size:  # resized while the guest was opening
            up.change_terminal_size(*self._term_size)
        for data in self._held:
            _write(up, data)
        if self._held_eof:
            _write_eof(up)
        self._held = []
        down.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._up is None:  # asyncssh starts delivery with the session: hold it for the guest
            self._held.append(data)
            assert self._down is not None
            self._down.pause_reading()  # the rest waits in the channel, bounded by its window
        else:
            _write(self._up, data)

    def eof_received(self) -> bool:
        if self._up is None:
            self._held_eof = True
        else:
            _write_eof(self._up)
        return True  # stay half-open: the guest may still be writing

    def pause_writing(self) -> None:
        if self._up is not None:
            self._up.pause_reading()

    def resume_writing(self) -> None:
        if self._up is not None:
            self._up.resume_reading()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._up is None:
            self._term_size = (width, height, pixwidth, pixheight)
        else:
            with contextlib.suppress(OSError):
                self._up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self._up is not None:
            with contextlib.suppress(OSError):
                self._up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._up is None:
            return False
        with contextlib.suppress(OSError):
            self._up.send_break(msec)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._down = None
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._up is not None:
            self._up.close()


class _UpstreamSession(asyncssh.SSHClientSession[bytes]):
    """The guest's end of a `ProxySession`: output, EOF and exit status flow back to the user."""

    def __init__(self, down: asyncssh.SSHServerChannel[bytes]) -> None:
        self._down = down
        self._status: int | None = None
        self._signal: tuple[str, bool, str, str] | None = None

    def data_received(self, data: bytes, datatype: int | None) -> None:
        _write(self._down, data, datatype)

    def eof_received(self) -> bool:
        _write_eof(self._down)
        return True

    def pause_writing(self) -> None:
        self._down.pause_reading()

    def resume_writing(self) -> None:
        self._down.resume_reading()

    def exit_status_received(self, status: int) -> None:
        self._status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._signal = (signal, core_dumped, msg, lang)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(OSError):
            if self._signal is not None:
                self._down.exit_with_signal(*self._signal)
            elif self._status is not None:
                self._down.exit(self._status)
            elif exc is not None:
                fail_session(self._down, f"the connection to the devbox was lost: {exc}")
            else:
                self._down.close()


class TCPRelayEnd(asyncssh.SSHTCPSession[bytes]):
    """One end of a forwarded TCP connection; whatever arrives is written to its twin's channel.

    The upstream end opens first; it holds its data until the user's channel is confirmed.
    """

    def __init__(self) -> None:
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.twin: TCPRelayEnd | None = None
        self.lost = False

    @classmethod
    def pair(cls) -> tuple[TCPRelayEnd, TCPRelayEnd]:
        up, down = cls(), cls()
        up.twin, down.twin = down, up
        return up, down

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        twin = self.twin
        assert twin is not None
        if twin.lost:
            chan.close()
        elif twin.chan is None:
            chan.pause_reading()
        else:
            twin.chan.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        assert self.twin is not None
        _write(self.twin.chan, data)

    def eof_received(self) -> bool:
        assert self.twin is not None
        _write_eof(self.twin.chan)
        return True

    def pause_writing(self) -> None:
        if self.twin is not None and self.twin.chan is not None:
            self.twin.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.twin is not None and self.twin.chan is not None:
            self.twin.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.twin is not None and self.twin.chan is not None:
            self.twin.chan.close()
