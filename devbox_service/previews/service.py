"""Exposed HTTP services: which guest port a name serves, who may reach it (`auth_mode`), and
where on the host loopback the preview proxy finds it.

The QEMU backend cannot remove a port forward, so unexposing only forgets the name: the
forward stays on 127.0.0.1 (never reachable from outside the host) until the VM ends.
"""

from __future__ import annotations

import enum
import re
import time
from typing import Annotated

import msgspec
from msgspec import Meta

from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.service import IdentityService
from devbox_service.db import Database, Row
from devbox_service.devboxes.models import DevboxStatus
from devbox_service.devboxes.service import DevboxService, require
from devbox_service.errors import InvalidInput, NotFound

# The contract's pattern (HttpExposeRequest.name), checked again with `fullmatch` in the
# service: msgspec uses `re.search`, where `$` also matches before a trailing newline.
NAME_PATTERN = "^[a-z0-9]([a-z0-9-_]*[a-z0-9])?$"
NAME_MAX_LENGTH = 40
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")


class HttpServiceAuthMode(enum.StrEnum):
    NONE = "none"  # anyone with the URL
    API_KEY = "api_key"  # a bearer key that may access the devbox


class HttpExposeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    auth_mode: HttpServiceAuthMode | None = HttpServiceAuthMode.NONE  # null means "none"


class ExposedService(msgspec.Struct, frozen=True, kw_only=True):
    devbox_id: str
    name: str
    port: int
    host_port: int
    auth_mode: HttpServiceAuthMode
    created_at: float


class PreviewTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where one proxied request goes, and whether its Authorization header was ours."""

    service: ExposedService
    host_port: int
    consumed_authorization: bool


def _service(row: Row) -> ExposedService:
    return ExposedService(
        devbox_id=row["devbox_id"],
        name=row["name"],
        port=row["port"],
        host_port=row["host_port"],
        auth_mode=HttpServiceAuthMode(row["auth_mode"]),
        created_at=row["created_at"],
    )


def check_name(name: str) -> str:
    if len(name) > NAME_MAX_LENGTH or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid service name {name!r}: use 1-{NAME_MAX_LENGTH} lowercase letters, digits, "
            "'-' or '_', starting and ending with a letter or digit",
            field="name",
        )
    return name


class HttpServiceRegistry:
    def __init__(
        self, database: Database, devboxes: DevboxService, identities: IdentityService
    ) -> None:
        self.database = database
        self.devboxes = devboxes
        self.identities = identities

    async def expose(
        self,
        principal: Principal,
        devbox_id: str,
        *,
        name: str,
        port: int,
        auth_mode: HttpServiceAuthMode | None,
    ) -> ExposedService:
        """Forward the guest port and record the service; the same name again replaces it.

        A service exposed with an agent token is always public (the contract says so).
        """
        check_name(name)
        if not 0 < port < 65536:
            raise InvalidInput(f"invalid port {port}: use 1-65535", field="port")
        record = await self.devboxes.visible(principal, devbox_id)
        require(record, "use")
        mode = auth_mode or HttpServiceAuthMode.NONE
        if principal.kind is PrincipalKind.AGENT:
            mode = HttpServiceAuthMode.NONE
        host_port = await self.devboxes.backend.expose_port(devbox_id, port)
        await self.database.execute(
            "INSERT INTO http_services (devbox_id, name, port, host_port, auth_mode, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (devbox_id, name) DO UPDATE SET "
            "port = excluded.port, host_port = excluded.host_port, auth_mode = excluded.auth_mode",
            (devbox_id, name, port, host_port, mode.value, time.time()),
        )
        return await self._get(devbox_id, name)

    async def unexpose(self, principal: Principal, devbox_id: str, name: str) -> None:
        await self.devboxes.visible(principal, devbox_id)
        check_name(name)  # a name no service can have: say so rather than "not found"
        removed = await self.database.execute(
            "DELETE FROM http_services WHERE devbox_id = ? AND name = ?", (devbox_id, name)
        )
        if not removed:
            raise NotFound.of("http service", name)

    async def services_of(self, devbox_id: str) -> list[ExposedService]:
        rows = await self.database.fetch_all(
            "SELECT * FROM http_services WHERE devbox_id = ? ORDER BY created_at, name",
            (devbox_id,),
        )
        return [_service(r) for r in rows]

    async def target(self, devbox_id: str, name: str, bearer: str | None) -> PreviewTarget:
        """Where a preview request goes: checks the service's auth mode (401 without a key,
        404 for a key that may not see the devbox) and wakes a paused devbox first."""
        service = await self._get(devbox_id, name)
        if service.auth_mode is HttpServiceAuthMode.API_KEY:
            principal = await self.identities.authenticate(bearer)
            if principal.kind is PrincipalKind.AGENT and principal.devbox_id != devbox_id:
                raise NotFound.of("devbox", devbox_id)
            await self.devboxes.visible(principal, devbox_id)
        record = await self.devboxes.store.get(devbox_id)
        if record is None or record.status is not DevboxStatus.READY:
            await self.devboxes.connect_target(devbox_id, woken_by="HTTP")  # 409 if it cannot
        host_port = await self._host_port(service)
        return PreviewTarget(
            service=service,
            host_port=host_port,
            consumed_authorization=service.auth_mode is HttpServiceAuthMode.API_KEY,
        )

    async def _host_port(self, service: ExposedService) -> int:
        """The forward as the backend knows it now (a VM relaunched after a restart of the
        service may have got new host ports), re-added if the VM lost it."""
        backend = self.devboxes.backend
        instance = await backend.get_instance(service.devbox_id)
        host_port = instance.exposed_ports.get(service.port)
        if host_port is None:
            host_port = await backend.expose_port(service.devbox_id, service.port)
        if host_port != service.host_port:
            await self.database.execute(
                "UPDATE http_services SET host_port = ? WHERE devbox_id = ? AND port = ?",
                (host_port, service.devbox_id, service.port),
            )
        return host_port

    async def _get(self, devbox_id: str, name: str) -> ExposedService:
        row = await self.database.fetch_one(
            "SELECT * FROM http_services WHERE devbox_id = ? AND name = ?", (devbox_id, name)
        )
        if row is None:
            raise NotFound.of("http service", name)
        return _service(row)
