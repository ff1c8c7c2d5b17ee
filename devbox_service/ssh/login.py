"""Who may log in to the SSH gateway: credential checks against the service, throttled.

SSH carries no host name (there is no SNI), so the devbox cannot come from the name the user
dialled. It comes from the credentials instead: the username is the devbox's SSH access token,
which names exactly one devbox, and the password proves it (or an API key login, or the
devbox's own key pair). Failed attempts slow down the next ones from the same source and user,
so guessing is slow while other users are never delayed.
"""

from __future__ import annotations

import asyncio
import logging
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


def throttle_key(address: str, username: str) -> str:
    """Failures count per source address and user name: every local client (guests' port
    forwards included) comes from 127.0.0.1, so an address alone would let a few bad logins
    lock out everyone."""
    return f"{address} {username}"


class LoginThrottle:
    """Slows password guessing per key (`throttle_key`): attempts with one key run one at a
    time, each after a delay that doubles with every failure (capped), forgotten on success or
    after `forget_after` quiet seconds. Other keys are never delayed."""

    def __init__(
        self,
        *,
        base_delay: float = 0.25,
        max_delay: float = 10.0,
        forget_after: float = 900.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._by_address: dict[str, _Failures] = {}

    def failures(self, address: str) -> int:
        entry = self._by_address.get(address)
        if entry is None or time.monotonic() - entry.last > self.forget_after:
            return 0
        return entry.count

    def penalty(self, address: str) -> float:
        """Seconds the next attempt from `address` waits before its password is checked."""
        count = self.failures(address)
        if count == 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(count - 1, 32)))

    async def attempt(self, address: str, check: Callable[[], Awaitable[bool]]) -> bool:
        entry = self._entry(address)
        async with entry.lock:
            await asyncio.sleep(self.penalty(address))
            ok = await check()
            if ok:
                self._by_address.pop(address, None)
            else:
                entry.count = self.failures(address) + 1
                entry.last = time.monotonic()
                self._by_address[address] = entry
            return ok

    def _entry(self, address: str) -> _Failures:
        entry = self._by_address.get(address)
        if entry is None:
            if len(self._by_address) >= self.max_addresses:
                self._forget_oldest()
            entry = self._by_address[address] = _Failures()
        return entry

    def _forget_oldest(self) -> None:
        now = time.monotonic()
        stale = [a for a, e in self._by_address.items() if now - e.last > self.forget_after]
        for address in stale or sorted(self._by_address, key=lambda a: self._by_address[a].last):
            if not self._by_address[address].lock.locked():
                del self._by_address[address]
            if len(self._by_address) < self.max_addresses // 2:
                break


class Logins:
    """The gateway's three ways in, each asked of the authority through the throttle."""

    def __init__(self, authority: LoginAuthority, throttle: LoginThrottle, timeout: float) -> None:
        self.authority = authority
        self.throttle = throttle
        self.timeout = timeout

    async def password(self, address: str, username: str, password: str) -> str | None:
        return await self._check(
            address, username, lambda: self.authority.authenticate(username, password)
        )

    async def api_key_login(self, address: str, username: str) -> str | None:
        devbox_id = username.partition(":")[0]  # the key itself is never kept or logged
        return await self._check(
            address, devbox_id, lambda: self.authority.authenticate_api_key_login(username)
        )

    async def devbox_key(self, address: str, username: str, public_key: str) -> str | None:
        return await self._check(
            address, username, lambda: self.authority.authenticate_devbox_key(username, public_key)
        )

    async def _check(
        self, address: str, who: str, lookup: Callable[[], Awaitable[str | None]]
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

        key = throttle_key(address, who)
        if not await self.throttle.attempt(key, check):
            log.warning(
                "SSH login failed",
                extra={"address": address, "failures": self.throttle.failures(key)},
            )
            return None
        log.info("SSH login", extra={"address": address, "devbox_id": devbox_id})
        return devbox_id
