"""Who may log in to the SSH gateway: credential checks against the service, throttled.

SSH carries no host name (there is no SNI), so the devbox cannot come from the name the user
dialled. It comes from the credentials instead: the username is the devbox's SSH access token,
which names exactly one devbox, and the password proves it (or an API key login, or the
devbox's own key pair).

The secrets carry 256 random bits, so guessing them is hopeless with or without a throttle;
what the throttle is for is a client that keeps failing, without ever making a right
credential wait. A credential that failed waits before its next check (per source address and
credential, doubling); a failure is answered only after a delay that grows with the failures
from its address. A right credential is checked at once and answered at once, however many
wrong ones name the same devbox or user from the same address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class LoginAuthority(Protocol):
    """What logins need from the service: which devbox, if any, credentials open."""

    async def authenticate(self, username: str, password: str) -> str | None:
        """Return the devbox id these credentials open, or None."""

    async def authenticate_api_key_login(self, username: str) -> str | None:
        """The devbox a `{devbox_id}:{api_key}` user name opens (the SDK's login, with any
        public key: the API key is the secret), or None."""

    async def authenticate_devbox_key(self, devbox_id: str, public_key: str) -> str | None:
        """The devbox when `public_key` (OpenSSH form) is its own key pair's, or None."""


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_KEY_SALT = secrets.token_bytes(16)
"""Credentials are counted by a keyed digest: the throttle's table holds no secret."""


def credential_key(address: str, kind: str, *credential: str) -> str:
    """What a credential's failures count against: the source address and the credential
    presented as a whole (user name and password, the whole `{devbox_id}:{api_key}` user
    name, user name and public key), never the devbox or user it names alone, or a stranger
    naming them would delay their owner."""
    digest = hmac.new(_KEY_SALT, "\0".join((kind, *credential)).encode(), hashlib.sha256)
    return f"{address} {digest.hexdigest()[:32]}"


class LoginThrottle:
    """Counts failures per key (a `credential_key`, an address), each entry forgotten after
    `forget_after` quiet seconds; a penalty doubles with every failure, capped at `max_delay`.
    Attempts with one credential run one at a time, after its penalty; a failure is answered
    after its address's penalty; a success is never delayed by another key's failures."""

    def __init__(
        self,
        *,
        base_delay: float = 0.25,
        max_delay: float = 10.0,
        forget_after: float = 900.0,
        max_keys: int = 10_000,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._by_key: dict[str, _Failures] = {}

    def failures(self, key: str) -> int:
        entry = self._by_key.get(key)
        if entry is None or time.monotonic() - entry.last > self.forget_after:
            return 0
        return entry.count

    def penalty(self, key: str) -> float:
        """Seconds the next attempt with `key` waits (before its check for a credential,
        before its failure is answered for an address)."""
        count = self.failures(key)
        if count == 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(count - 1, 32)))

    async def attempt(
        self, credential: str, address: str, check: Callable[[], Awaitable[bool]]
    ) -> bool:
        entry = self._entry(credential)
        async with entry.lock:
            await asyncio.sleep(self.penalty(credential))
            if await check():
                self._by_key.pop(credential, None)  # the address's failures stand
                return True
            self._fail(credential)
            self._fail(address)
            await asyncio.sleep(self.penalty(address))
            return False

    def _fail(self, key: str) -> None:
        entry = self._entry(key)
        entry.count = self.failures(key) + 1
        entry.last = time.monotonic()
        self._by_key[key] = entry

    def _entry(self, key: str) -> _Failures:
        entry = self._by_key.get(key)
        if entry is None:
            if len(self._by_key) >= self.max_keys:
                self._forget_oldest()
            entry = self._by_key[key] = _Failures()
        return entry

    def _forget_oldest(self) -> None:
        now = time.monotonic()
        stale = [a for a, e in self._by_key.items() if now - e.last > self.forget_after]
        for key in stale or sorted(self._by_key, key=lambda a: self._by_key[a].last):
            if not self._by_key[key].lock.locked():
                del self._by_key[key]
            if len(self._by_key) < self.max_keys // 2:
                break


class Logins:
    """The gateway's three ways in, each asked of the authority through the throttle."""

    def __init__(self, authority: LoginAuthority, throttle: LoginThrottle, timeout: float) -> None:
        self.authority = authority
        self.throttle = throttle
        self.timeout = timeout

    async def password(self, address: str, username: str, password: str) -> str | None:
        return await self._check(
            address,
            credential_key(address, "password", username, password),
            lambda: self.authority.authenticate(username, password),
        )

    async def api_key_login(self, address: str, username: str) -> str | None:
        return await self._check(  # the key itself is never kept or logged
            address,
            credential_key(address, "api-key", username),
            lambda: self.authority.authenticate_api_key_login(username),
        )

    async def devbox_key(self, address: str, username: str, public_key: str) -> str | None:
        return await self._check(
            address,
            credential_key(address, "devbox-key", username, public_key),
            lambda: self.authority.authenticate_devbox_key(username, public_key),
        )

    async def _check(
        self, address: str, credential: str, lookup: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        """The devbox id the credentials open; a slow or failing authority denies, never hangs."""
        devbox_id: str | None = None

        async def check() -> bool:
            nonlocal devbox_id
            try:
                async with asyncio.timeout(self.timeout):
                    devbox_id = await lookup()
            except Exception:
                log.exception("SSH gateway could not check credentials from %s", address)
                return False
            return devbox_id is not None

        if not await self.throttle.attempt(credential, address, check):
            log.warning(
                "SSH login failed",
                extra={"address": address, "failures": self.throttle.failures(address)},
            )
            return None
        log.info("SSH login", extra={"address": address, "devbox_id": devbox_id})
        return devbox_id
