"""Exposed HTTP services: which guest port a name serves, who may reach it (`auth_mode`), and
where on the host loopback the preview proxy finds it. Unexposing closes the port forward.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.policy import Act, permits
from devbox_service.auth.service import IdentityService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.ports import DevboxVisibility
from devbox_service.devboxes.schemas import HttpService
from devbox_service.errors import InvalidInput, NotFound, PermissionDenied
from devbox_service.previews.models import (
    NAME_MAX_LENGTH,
    ExposedService,
    HttpServiceAuthMode,
    PreviewTarget,
)
from devbox_service.previews.store import HttpServiceStore

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")


def check_name(name: str) -> str:
    if len(name) > NAME_MAX_LENGTH or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid service name {name!r}: use 1-{NAME_MAX_LENGTH} lowercase letters, digits, "
            "'-' or '_', starting and ending with a letter or digit",
            field="name",
        )
    return name


_DEVBOX_ID = re.compile(r"[a-z]+_[A-Za-z0-9]{1,40}")


class HttpServiceRegistry:
    def __init__(
        self,
        store: HttpServiceStore,
        devboxes: DevboxVisibility,
        guests: GuestAccess,
        identities: IdentityService,
        url_of: Callable[[str, str], str],
    ) -> None:
        self._store = store
        self._devboxes = devboxes
        self._guests = guests
        self._identities = identities
        self._url_of = url_of  # (devbox id, name) -> the service's own origin

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
        Raises InvalidInput, NotFound, Conflict (devbox not ready), PermissionDenied (an agent
        token replacing a user's api_key service, which would make it public)."""
        check_name(name)
        if not 0 < port < 65536:
            raise InvalidInput(f"invalid port {port}: use 1-65535", field="port")
        record = await self._devboxes.visible(principal, devbox_id, Act.EXPOSE)
        mode = auth_mode or HttpServiceAuthMode.NONE
        if principal.kind is PrincipalKind.AGENT:
            mode = HttpServiceAuthMode.NONE  # the contract: an agent's services are public
        existing = (await self._store.for_devboxes([devbox_id]))[devbox_id]
        protected = [
            s.name
            for s in existing
            if s.auth_mode is HttpServiceAuthMode.API_KEY and (s.port == port or s.name == name)
        ]
        weakens = protected and mode is not HttpServiceAuthMode.API_KEY
        if weakens and not permits(principal, Act.WEAKEN_PREVIEW, record):
            raise PermissionDenied(
                f"port {port} (or the name {name!r}) is exposed with api_key "
                f"({', '.join(protected)}); only the devbox's owner, with a user API key, "
                "may open it without a key"
            )
        host_port = await self._guests.expose_port(principal, devbox_id, port)
        await self._store.upsert(
            ExposedService(
                devbox_id=devbox_id,
                name=name,
                port=port,
                host_port=host_port,
                auth_mode=mode,
                created_at=time.time(),
            )
        )
        await self._store.set_port_mode(devbox_id, port, mode.value)
        return await self._get(devbox_id, name)

    async def unexpose(self, principal: Principal, devbox_id: str, name: str) -> None:
        """Forget the service and close its port forward unless another service uses it.
        Raises NotFound, InvalidInput (a name no service can have)."""
        await self._devboxes.visible(principal, devbox_id, Act.EXPOSE)
        check_name(name)  # a name no service can have: say so rather than "not found"
        service = await self._store.get(devbox_id, name)
        if service is None or not await self._store.delete(devbox_id, name):
            raise NotFound.of("http service", name)
        remaining = (await self._store.for_devboxes([devbox_id]))[devbox_id]
        if all(s.port != service.port for s in remaining):
            await self._guests.unexpose_port(devbox_id, service.port)

    def own_origin(self, devbox_id: str, name: str) -> str:
        """The service's own origin (`{name}-{devbox_id}.<domain>`), the only place its
        pages are served: a preview never shares the dashboard's origin. Checked first, so a
        crafted name or id never makes another host."""
        check_name(name)
        if not _DEVBOX_ID.fullmatch(devbox_id):
            raise NotFound.of("devbox", devbox_id)
        return self._url_of(devbox_id, name)

    async def http_services_for(self, devbox_ids: Sequence[str]) -> dict[str, list[HttpService]]:
        """The exposed services of each devbox, with their preview URLs (devbox views)."""
        found = await self._store.for_devboxes(devbox_ids)
        return {
            devbox_id: [
                HttpService(
                    name=s.name,
                    port=s.port,
                    url=self._url_of(devbox_id, s.name),
                    auth_mode=s.auth_mode.value,
                )
                for s in services
            ]
            for devbox_id, services in found.items()
        }

    async def target(self, devbox_id: str, name: str, bearer: str | None) -> PreviewTarget:
        """Where a preview request goes: checks the service's auth mode (401 without a key,
        404 for a key that may not see the devbox) and wakes a paused devbox first. A name no
        service has is treated as a keyed one (401 without a valid key, then 404), so a
        visitor without a key cannot tell which keyed services exist."""
        service = await self._store.get(devbox_id, name)
        if service is None:
            await self._identities.authenticate(bearer)
            raise NotFound.of("http service", name)
        if service.auth_mode is HttpServiceAuthMode.API_KEY:
            principal = await self._identities.authenticate(bearer)
            await self._devboxes.visible(principal, devbox_id, Act.VIEW)
        upstream = await self._guests.preview_port(devbox_id, service.port)
        if upstream.port != service.host_port:
            await self._store.set_host_port(devbox_id, service.port, upstream.port)
        return PreviewTarget(
            service=service,
            upstream=upstream,
            consumed_authorization=service.auth_mode is HttpServiceAuthMode.API_KEY,
        )

    async def _get(self, devbox_id: str, name: str) -> ExposedService:
        service = await self._store.get(devbox_id, name)
        if service is None:
            raise NotFound.of("http service", name)
        return service
