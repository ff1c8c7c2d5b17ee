"""The scopes an agent token may hold, and what a token gets when none are asked for."""

from __future__ import annotations

SUMMARY_READ = "devbox:summary:read"
HTTP_WRITE = "devbox:http:write"
SNAPSHOT_WRITE = "devbox:snapshot:write"
SECRETS_READ = "devbox:secrets:read"
SECRETS_WRITE = "devbox:secrets:write"
NOTIFICATIONS_WRITE = "devbox:notifications:write"
METADATA_WRITE = "devbox:metadata:write"

ALL_SCOPES: dict[str, str] = {
    SUMMARY_READ: "GET the devbox and its summary",
    HTTP_WRITE: "expose and unexpose HTTP services of the devbox",
    SNAPSHOT_WRITE: "save the devbox (memory + disk checkpoint)",
    SECRETS_READ: "read the user's secrets (all, or those named when minting)",
    SECRETS_WRITE: "create, update and delete the user's secrets",
    NOTIFICATIONS_WRITE: "post notifications for the devbox",
    METADATA_WRITE: "update the devbox's metadata",
}

DEFAULT_SCOPES: tuple[str, ...] = (
    SUMMARY_READ,
    HTTP_WRITE,
    SNAPSHOT_WRITE,
    SECRETS_READ,
    SECRETS_WRITE,
)

SECRET_SCOPES = frozenset({SECRETS_READ, SECRETS_WRITE})


def granted(
    asked: list[str] | None, *, injected: bool, secret_names: list[str] | None
) -> list[str]:
    """The scopes a new token holds. A token injected into the devbox is readable by anyone
    with a shell there (org members included), so it reaches the owner's secrets only when
    the owner named which (`secret_names`)."""
    chosen = set(asked if asked is not None else DEFAULT_SCOPES)
    if injected and secret_names is None:
        chosen -= SECRET_SCOPES
    return sorted(chosen)
