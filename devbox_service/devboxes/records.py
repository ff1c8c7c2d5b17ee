"""How a devbox's rows are made: its SSH gateway credentials, its timeline entries, and who
may do what costs its owner."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from devbox_service.auth.models import Principal
from devbox_service.backends.base import MachineSpec
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventRecord, EventType
from devbox_service.errors import PayloadTooLarge
from devbox_service.ids import new_id


def new_credentials() -> dict[str, str]:
    """A devbox's SSH gateway credentials: an access token (found by its hash) with a
    password, and a key pair for logging in as the devbox's id with `ssh -i`."""
    private = ed25519.Ed25519PrivateKey.generate()
    return {
        "access_token": "dbxssh_" + secrets.token_hex(16),
        "password": secrets.token_urlsafe(24),
        "private_key": private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode(),
        "public_key": private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode(),
    }


def new_record(
    principal: Principal,
    snapshot_id: str,
    image_id: str | None,
    spec: MachineSpec,
    name: str,
    metadata: dict[str, Any],
    parent_id: str | None,
    credentials_sealed: str,
) -> DevboxRecord:
    """A devbox as created: `provisioning` until its boot is done."""
    now = time.time()
    return DevboxRecord(
        id=new_id("devbox"),
        org_id=principal.org_id,
        user_id=principal.user_id,
        name=name,
        status=DevboxStatus.PROVISIONING,
        base_snapshot_id=snapshot_id,
        image_id=image_id,
        current_save_id=None,
        parent_id=parent_id,
        vcpus=spec.vcpus,
        memory_mb=spec.memory_mb,
        disk_mb=spec.disk_mb,
        metadata=metadata,
        error=None,
        created_at=now,
        updated_at=now,
        ssh_credentials_sealed=credentials_sealed,
    )


def new_event(
    devbox_id: str,
    type_: EventType,
    snapshot_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> EventRecord:
    return EventRecord(
        id=new_id("event"),
        devbox_id=devbox_id,
        type=type_,
        snapshot_id=snapshot_id,
        detail=detail if detail is not None else {"name": type_.value},
        created_at=time.time(),
    )


METADATA_MAX_BYTES = 64 * 1024
"""Metadata of one devbox or snapshot, in total (every list response carries it)."""


def check_metadata_size(kind: str, metadata: dict[str, Any]) -> None:
    """Raises PayloadTooLarge past METADATA_MAX_BYTES of JSON."""
    size = len(json.dumps(metadata))
    if size > METADATA_MAX_BYTES:
        raise PayloadTooLarge(
            f"the {kind}'s metadata would be {size} bytes; the limit is "
            f"{METADATA_MAX_BYTES} in total: send smaller values"
        )
