"""Dashboard sign-in: a user API key turned into an expiring, revocable browser session.

The cookie carries a random secret; the store keeps only its hash and the key it came from,
so revoking the key (or signing out, or expiry) ends the session. The CSRF token of a
session is derived from its secret, so a page can embed it and no other site can know it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import msgspec

from devbox_service.auth import tokens
from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.service import IdentityService
from devbox_service.errors import NotAuthenticated, PermissionDenied
from devbox_service.ids import new_id

SESSION_PREFIX = "dbxweb_"
SESSION_COOKIE = "devbox_session"
SIGN_IN_COOKIE = "devbox_sign_in"  # the sign-in form's own CSRF secret, before a session


class SignInRequired(NotAuthenticated):
    """No live dashboard session: pages send the browser to the sign-in form."""


class SignedIn(msgspec.Struct, frozen=True, kw_only=True):
    secret: str
    expires_at: float
    principal: Principal


class WebSessions:
    def __init__(self, identities: IdentityService, lifetime_seconds: float) -> None:
        self._identities = identities
        self._store = identities.store
        self.lifetime_seconds = lifetime_seconds

    async def sign_in(self, api_key: str) -> SignedIn:
        """Raises NotAuthenticated (unknown or revoked key), PermissionDenied (agent token)."""
        api_key = api_key.strip()
        if api_key.startswith(tokens.AGENT_TOKEN_PREFIX):
            raise PermissionDenied(
                "agent tokens cannot sign in to the dashboard: use a user API key"
            )
        if not api_key:
            raise NotAuthenticated("enter your API key to sign in")
        principal = await self._identities.authenticate(api_key)
        assert principal.kind is PrincipalKind.USER
        secret = tokens.new_secret(SESSION_PREFIX)
        expires_at = time.time() + self.lifetime_seconds
        await self._store.insert_web_session(
            new_id("websession"), tokens.hash_secret(secret), principal.credential_id, expires_at
        )
        await self._store.delete_expired_web_sessions()
        return SignedIn(secret=secret, expires_at=expires_at, principal=principal)

    async def principal(self, secret: str | None) -> Principal:
        """The signed-in user; SignInRequired when the session is missing, expired, signed
        out, or its API key was revoked."""
        if not secret or not secret.startswith(SESSION_PREFIX):
            raise SignInRequired("sign in to use the dashboard")
        principal = await self._store.principal_for_web_session(tokens.hash_secret(secret))
        if principal is None:
            raise SignInRequired("your session has ended: sign in again")
        return principal

    async def sign_out(self, secret: str | None) -> None:
        if secret:
            await self._store.delete_web_session(tokens.hash_secret(secret))


def csrf_token(secret: str) -> str:
    """The form token of one session (or of one sign-in form's cookie)."""
    return hmac.new(secret.encode(), b"devbox-service csrf", hashlib.sha256).hexdigest()


def check_csrf(secret: str | None, token: str | None) -> None:
    """Raises PermissionDenied unless `token` belongs to `secret`."""
    if not secret or not token or not hmac.compare_digest(csrf_token(secret), token):
        raise PermissionDenied(
            "this form is out of date or came from another site: reload the page and try again"
        )
