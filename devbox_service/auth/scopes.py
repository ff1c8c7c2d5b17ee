"""The scopes an agent token may hold, and what a token gets when none are asked for."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class AgentScope(enum.StrEnum):
    """What an agent token may do. Named once here for routes, requests and defaults."""

    SUMMARY_READ = "devbox:summary:read"  # GET the devbox and its summary
    HTTP_WRITE = "devbox:http:write"  # expose and unexpose HTTP services of the devbox
    SNAPSHOT_WRITE = "devbox:snapshot:write"  # save the devbox (memory + disk checkpoint)
    SECRETS_READ = "devbox:secrets:read"  # read the user's secrets (all, or those named)
    SECRETS_WRITE = "devbox:secrets:write"  # create, update and delete the user's secrets
    NOTIFICATIONS_WRITE = "devbox:notifications:write"  # post notifications for the devbox
    METADATA_WRITE = "devbox:metadata:write"  # update the devbox's metadata


DEFAULT_SCOPES: tuple[AgentScope, ...] = (
    AgentScope.SUMMARY_READ,
    AgentScope.HTTP_WRITE,
    AgentScope.SNAPSHOT_WRITE,
    AgentScope.SECRETS_READ,
    AgentScope.SECRETS_WRITE,
)

SECRET_SCOPES = frozenset({AgentScope.SECRETS_READ, AgentScope.SECRETS_WRITE})


def granted(
    asked: Iterable[AgentScope] | None, *, injected: bool, secret_names: list[str] | None
) -> list[str]:
    """The scopes a new token holds. A token injected into the devbox is readable by anyone
    with a shell there (org members included), so it reaches the owner's secrets only when
    the owner named which (`secret_names`)."""
    chosen = set(asked if asked is not None else DEFAULT_SCOPES)
    if injected and secret_names is None:
        chosen -= SECRET_SCOPES
    return sorted(scope.value for scope in chosen)
