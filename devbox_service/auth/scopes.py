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
