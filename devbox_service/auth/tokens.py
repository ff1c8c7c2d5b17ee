"""Bearer secrets: how they look, how they are stored (hashed), how they are compared."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "dbx_"
AGENT_TOKEN_PREFIX = "dbxat_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 is enough: the secrets carry 256 random bits, so no salt or stretching helps.

    Lookup is by this digest (an index on it), so a caller learns nothing from timing about
    stored keys that share a prefix with theirs.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def display_prefix(secret: str) -> str:
    """Enough of a key to recognise it in `keys list`, never enough to use it."""
    return secret[:10]
