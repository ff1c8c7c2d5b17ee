"""What other domains may ask of the devbox domain, as small interfaces (so they depend on a
method, not on the devbox services or the VM backend)."""

from __future__ import annotations

from typing import Protocol

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.devboxes.models import DevboxRecord


class DevboxVisibility(Protocol):
    async def visible(self, principal: Principal, devbox_id: str, act: Act) -> DevboxRecord:
        """The devbox if the one policy lets the caller do `act` to it; raises NotFound
        (not visible to them) or PermissionDenied otherwise."""
        ...
