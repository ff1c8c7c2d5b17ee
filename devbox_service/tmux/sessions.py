"""The session transport: libtmux's object model (list, create, rename, kill) in one guest.

libtmux runs a `tmux` binary per call; here that binary is a per-devbox wrapper script that
runs tmux in the guest through a persistent OpenSSH ControlMaster, so each call is one
multiplexed channel, not a new SSH handshake. The wrapper replaces a dead master (a restored,
resumed or rebooted guest drops its TCP connections) and retries once before giving up.

libtmux is synchronous: every call runs in a worker thread, and its errors become domain
errors here (`_call`), nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libtmux
from libtmux import exc as tmux_exc

from devbox_service.backends.base import SSHEndpoint
from devbox_service.errors import (
    Conflict,
    DevboxServiceError,
    Failed,
    InvalidInput,
    NotFound,
    Unreachable,
)
from devbox_service.sockets import short_socket_path
from devbox_service.tmux.models import TmuxSession

T = TypeVar("T")

ENV = "LC_ALL=C.UTF-8"
CONTROL_SESSION = "_devbox_ctl"
"""The hidden session the command client attaches to (a control client needs one)."""
UNREACHABLE = "devbox-service: the guest did not answer SSH"
"""What the wrapper prints when SSH itself failed, so it is told apart from tmux's errors."""

WRAPPER = """#!/bin/bash
# tmux in devbox {devbox_id}, through an OpenSSH ControlMaster (written by devbox-service).
opts=(-F /dev/null -o ForwardAgent=no -o IdentitiesOnly=yes -o IdentityAgent=none
      -o ControlMaster=auto -o ControlPath={control_path} -o ControlPersist=600
      -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ConnectTimeout=10
      -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o LogLevel=ERROR -i {key} -p {port})
dest={dest}
remote="{env} exec tmux $(printf '%q ' "$@")"
master() {{
  # Start the master detached from our stdio: a master forked by the command itself would
  # keep the caller's pipes open (libtmux would wait for EOF until ControlPersist ends).
  ssh "${{opts[@]}}" -O check "$dest" >/dev/null 2>&1 ||
    ssh "${{opts[@]}}" -M -N -f "$dest" </dev/null >/dev/null 2>&1
}}
master
ssh "${{opts[@]}}" -n -T "$dest" -- "$remote"
rc=$?
if [ $rc -eq 255 ]; then
  # the master's connection died (restore, reboot): replace it and try once more
  ssh "${{opts[@]}}" -O exit "$dest" >/dev/null 2>&1
  master
  ssh "${{opts[@]}}" -n -T "$dest" -- "$remote"
  rc=$?
  [ $rc -eq 255 ] && echo {unreachable} >&2
fi
exit $rc
"""


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


def _taken(name: str) -> Conflict:
    return Conflict(f"tmux session {name!r} already exists")


class LibtmuxSessions:
    """Sessions of one guest's tmux servers, through libtmux and the wrapper script."""

    def __init__(self, devbox_id: str, endpoint: SSHEndpoint, runtime_dir: Path) -> None:
        self.devbox_id = devbox_id
        self.endpoint = endpoint
        self._dir = runtime_dir / devbox_id
        self.wrapper = self._dir / "tmux"
        self.control_path = short_socket_path(self._dir / "cm.sock")
        self._write_wrapper()

    def _write_wrapper(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ep = self.endpoint
        text = WRAPPER.format(
            devbox_id=self.devbox_id,
            control_path=shlex.quote(str(self.control_path)),
            key=shlex.quote(ep.private_key_path),
            port=ep.port,
            dest=shlex.quote(f"{ep.username}@{ep.host}"),
            env=ENV,
            unreachable=shlex.quote(UNREACHABLE),
        )
        self.wrapper.write_text(text)
        self.wrapper.chmod(0o700)

    def _server(self, socket: str | None) -> libtmux.Server:
        name = socket if socket and "/" not in socket else None
        path = socket if socket and "/" in socket else None
        return libtmux.Server(socket_name=name, socket_path=path, tmux_bin=str(self.wrapper))

    async def _call(self, call: Callable[[], T]) -> T:
        """`call` in a worker thread; libtmux's errors as domain errors."""
        try:
            return await asyncio.to_thread(call)
        except DevboxServiceError:
            raise
        except tmux_exc.TmuxSessionExists as exc:
            raise Conflict(str(exc) or "tmux session already exists") from exc
        except tmux_exc.BadSessionName as exc:
            raise InvalidInput(str(exc)) from exc
        except tmux_exc.LibTmuxException as exc:
            message = str(exc)
            if UNREACHABLE in message:
                raise Unreachable(f"cannot reach devbox {self.devbox_id} over SSH") from exc
            if "duplicate session" in message:
                raise Conflict(message) from exc
            if "can't find" in message:
                raise NotFound(message) from exc
            raise Failed(f"tmux failed: {message}") from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise Failed(f"cannot run tmux for devbox {self.devbox_id}: {exc}") from exc

    async def list_sessions(self, socket: str | None) -> list[TmuxSession]:
        server = self._server(socket)
        return await self._call(
            lambda: [_session(s) for s in server.sessions if s.session_name != CONTROL_SESSION]
        )

    async def new_session(self, socket: str | None, name: str) -> TmuxSession:
        server = self._server(socket)

        def create() -> TmuxSession:
            if server.has_session(name, exact=True):
                raise _taken(name)
            return _session(server.new_session(session_name=name, attach=False))

        return await self._call(create)

    async def rename_session(self, socket: str | None, target: str, new_name: str) -> TmuxSession:
        server = self._server(socket)

        def rename() -> TmuxSession:
            session = _find(server, target)
            if new_name != session.session_name and server.has_session(new_name, exact=True):
                raise _taken(new_name)
            session.rename_session(new_name)
            return _session(_find(server, session.session_id or new_name))

        return await self._call(rename)

    async def kill_session(self, socket: str | None, target: str) -> str:
        server = self._server(socket)

        def kill() -> str:
            session = _find(server, target)
            session.kill()
            return session.session_name or target

        return await self._call(kill)

    async def close(self) -> None:
        """Stop the ControlMaster."""
        await asyncio.to_thread(self._stop_master)

    def _stop_master(self) -> None:
        ep = self.endpoint
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [
                    "ssh",
                    "-F",
                    "/dev/null",
                    "-o",
                    f"ControlPath={self.control_path}",
                    "-O",
                    "exit",
                    f"{ep.username}@{ep.host}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=False,
            )
