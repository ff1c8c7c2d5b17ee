"""The way into a devbox's guest, for the domains that need one: the SSH gateway (credentials,
wake on SSH), previews (wake on HTTP, forwarded ports), uploads, tmux and agent tokens.

Each gets one narrow method here instead of the VM backend: they never see a VM, only
"the guest endpoint of a devbox this caller may use".
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Protocol

from devbox_service.auth import tokens
from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, permits
from devbox_service.backends import base as backend_api
from devbox_service.backends.base import PortForward, SSHEndpoint
from devbox_service.devboxes.core import DestroyListener, DevboxCore
from devbox_service.devboxes.lifecycle import SETTLING, Action, require
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.devboxes.records import new_credentials
from devbox_service.devboxes.schemas import DevboxSSHCredentialsResponse
from devbox_service.errors import Conflict, NotAuthenticated, NotFound, PermissionDenied

SETTLE_TIMEOUT = 120.0


class GuestFiles(Protocol):
    """What the service needs from an SSH connection into a guest (an adapter in ssh/)."""

    async def write_file(
        self,
        endpoint: SSHEndpoint,
        path: str,
        data: bytes | AsyncIterable[bytes],
        mode: int = 0o644,
    ) -> None: ...

    async def forget(self, endpoint: SSHEndpoint) -> None: ...


MembershipCheck = Callable[[str, str], Awaitable[bool]]
"""(org id, user id) -> is the user still a member of the org?"""


class GuestAccess:
    def __init__(
        self,
        core: DevboxCore,
        files: GuestFiles,
        is_member: MembershipCheck,
        authenticate: Callable[[str], Awaitable[Principal]],
    ) -> None:
        self._core = core
        self._files = files
        self._is_member = is_member
        self._authenticate = authenticate
        core.on_destroy(self._forget_connection)

    def on_destroy(self, listener: DestroyListener) -> None:
        """Call `listener(devbox_id)` before a devbox's VM goes (to close connections)."""
        self._core.on_destroy(listener)

    async def usable(self, principal: Principal, devbox_id: str, act: Act) -> None:
        """Raises NotFound, PermissionDenied (the policy keeps `act` from the caller),
        Conflict (the devbox's guest is not up)."""
        require(await self._core.visible(principal, devbox_id, act), Action.USE)

    async def guest_endpoint(self, principal: Principal, devbox_id: str, act: Act) -> SSHEndpoint:
        """Where the service reaches the guest of a devbox this principal may do `act` to.
        Raises NotFound, PermissionDenied, Conflict (not ready), Unavailable (no backend)."""
        await self.usable(principal, devbox_id, act)
        return (await self._core.backend.get_instance(devbox_id)).ssh

    async def write_file(
        self,
        principal: Principal,
        devbox_id: str,
        path: str,
        data: bytes | AsyncIterable[bytes],
        mode: int = 0o644,
    ) -> None:
        """Write a whole file into the guest (readers never see half of it)."""
        endpoint = await self.guest_endpoint(principal, devbox_id, Act.UPLOAD)
        await self._files.write_file(endpoint, path, data, mode)

    async def _forget_connection(self, devbox_id: str) -> None:
        if self._core.has_backend:
            with contextlib.suppress(backend_api.BackendError):
                await self._files.forget((await self._core.backend.get_instance(devbox_id)).ssh)

    async def may_type(self, principal: Principal, devbox_id: str) -> bool:
        """Whether the policy lets the caller type into the devbox's terminals (a page
        shows the keyboard only then). Raises NotFound for a devbox they do not see."""
        record = await self._core.visible(principal, devbox_id, Act.WATCH)
        return permits(principal, Act.TYPE, record)

    # the SSH gateway

    def _credentials(self, record: DevboxRecord) -> dict[str, str]:
        assert record.ssh_credentials_sealed is not None
        sealed: dict[str, str] = json.loads(
            self._core.box.open_sealed(record.ssh_credentials_sealed)
        )
        return sealed

    async def _set_credentials(self, devbox_id: str, credentials: dict[str, str]) -> None:
        """Replace a devbox's gateway credentials (the old ones stop working at once)."""
        await self._core.store.update(
            devbox_id,
            ssh_credentials_sealed=self._core.box.seal(json.dumps(credentials)),
            ssh_token_hash=tokens.hash_secret(credentials["access_token"]),
        )

    async def ssh_credentials(
        self, principal: Principal, devbox_id: str
    ) -> DevboxSSHCredentialsResponse:
        """Only the owner. Raises NotFound, PermissionDenied."""
        record = await self._core.visible(principal, devbox_id, Act.SSH)
        credentials = self._credentials(record)
        return DevboxSSHCredentialsResponse(
            access_token=credentials["access_token"], password=credentials["password"]
        )

    async def ssh_key(self, principal: Principal, devbox_id: str) -> dict[str, str]:
        """The gateway credentials with the devbox's key pair (one is made for a devbox from
        before key pairs). Only the owner. Raises NotFound, PermissionDenied."""
        async with self._core.locked(principal, devbox_id, Act.SSH) as record:
            credentials = self._credentials(record)
            if "private_key" not in credentials:
                fresh = new_credentials()
                credentials |= {k: fresh[k] for k in ("private_key", "public_key")}
                await self._set_credentials(devbox_id, credentials)
            return credentials

    async def rotate_ssh_key(self, principal: Principal, devbox_id: str) -> dict[str, str]:
        """New credentials; the old token, password and key stop working at once."""
        async with self._core.locked(principal, devbox_id, Act.SSH):
            credentials = new_credentials()
            await self._set_credentials(devbox_id, credentials)
            return credentials

    async def authenticate_devbox_key(self, devbox_id: str, public_key: str) -> str | None:
        """The devbox whose own key pair this public key (OpenSSH form) is, or None."""
        record = await self._core.store.get(devbox_id)
        if record is None or record.status is DevboxStatus.DELETING:
            return None
        if not await self._is_member(record.org_id, record.user_id):
            return None
        known = self._credentials(record).get("public_key", "")
        offered = " ".join(public_key.split()[:2])
        matches = bool(known) and secrets.compare_digest(" ".join(known.split()[:2]), offered)
        return record.id if matches else None

    async def authenticate(self, username: str, password: str) -> str | None:
        """The devbox whose SSH gateway credentials these are, or None (also once the owner has
        left the devbox's org)."""
        record = await self._core.store.by_ssh_token_hash(tokens.hash_secret(username))
        if record is None or record.status is DevboxStatus.DELETING:
            return None
        if not await self._is_member(record.org_id, record.user_id):
            return None
        expected = self._credentials(record)["password"]
        return record.id if secrets.compare_digest(expected, password) else None

    async def authenticate_api_key_login(self, username: str) -> str | None:
        """`{devbox_id}:{api_key}`: a user key of the devbox's owner (who alone may type into
        it, as for its terminals); agent tokens log in with the devbox's own credentials."""
        devbox_id, _, key = username.partition(":")
        if not devbox_id or not key or key.startswith(tokens.AGENT_TOKEN_PREFIX):
            return None
        try:
            principal = await self._authenticate(key)
            record = await self._core.visible(principal, devbox_id, Act.SSH)
        except (NotAuthenticated, NotFound, PermissionDenied):
            return None
        if record.status is DevboxStatus.DELETING:
            return None
        return record.id

    async def connect_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        """Where the guest's sshd is; a paused devbox is resumed first (wake on SSH, or on
        HTTP for the preview proxy), one still starting is waited for. Raises NotFound,
        Conflict (a devbox that cannot get ready)."""
        await self._core.touch(devbox_id)
        return await self.ready_target(devbox_id, woken_by=woken_by)

    async def ready_target(self, devbox_id: str, *, woken_by: str = "SSH") -> SSHEndpoint:
        """`connect_target` for a caller that has noted the activity already (an API action,
        touched by the auth guard): one use is one TTL restart."""
        record = await self._core.record(devbox_id)
        wakes = record.wake_on_http if woken_by == "HTTP" else record.wake_on_ssh
        if record.status is DevboxStatus.PAUSED and not wakes:
            raise Conflict(
                f"devbox {devbox_id} is paused and does not wake on {woken_by}: resume it, "
                f"or turn wake_on_{woken_by.lower()} on",
                state=record.status.value,
            )
        if record.status is DevboxStatus.PAUSED:
            async with self._core.held(devbox_id) as held:
                if held is None:
                    raise NotFound.of("devbox", devbox_id)
                if held.status is DevboxStatus.PAUSED:
                    detail = {"name": f"resumed by {woken_by}"}
                    await self._core.apply(held, Action.RESUME, detail=detail)
        current = await self._core.wait(devbox_id, _settled, SETTLE_TIMEOUT)
        if current is None or current.status is not DevboxStatus.READY:
            state = current.status.value if current else "deleted"
            raise Conflict(f"devbox {devbox_id} is {state}", state=state)
        return (await self._core.backend.get_instance(devbox_id)).ssh

    # previews

    async def expose_port(self, principal: Principal, devbox_id: str, guest_port: int) -> int:
        """Forward a guest port of a usable devbox; the host loopback port it got."""
        record = await self._core.visible(principal, devbox_id, Act.EXPOSE)
        require(record, Action.USE)
        return await self._core.backend.expose_port(devbox_id, guest_port)

    async def unexpose_port(self, devbox_id: str, guest_port: int) -> None:
        """Close a forward no exposed service uses any more (a VM already gone has none)."""
        with contextlib.suppress(backend_api.NotFound):
            await self._core.backend.unexpose_port(devbox_id, guest_port)

    async def preview_port(self, devbox_id: str, guest_port: int) -> PortForward:
        """Where a guest port is reached now, waking the devbox first (wake on HTTP); a VM
        relaunched after a restart may have lost the forward: it is re-added."""
        await self.connect_target(devbox_id, woken_by="HTTP")
        instance = await self._core.backend.get_instance(devbox_id)
        host_port = instance.exposed_ports.get(guest_port)
        if host_port is None:
            host_port = await self._core.backend.expose_port(devbox_id, guest_port)
        return PortForward(address=instance.address, port=host_port)


def _settled(record: DevboxRecord | None) -> bool:
    """Not in a status the devbox leaves by itself (gone counts as settled)."""
    return record is None or record.status not in SETTLING
