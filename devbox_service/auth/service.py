"""Identity rules: who exists, which keys are live, who the bearer of a token is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from devbox_service.auth import tokens
from devbox_service.auth.agent_token_store import AgentTokenStore
from devbox_service.auth.models import (
    ApiKeyRecord,
    IssuedKey,
    Membership,
    Org,
    Principal,
    Role,
    User,
)
from devbox_service.auth.store import IdentityStore
from devbox_service.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotAuthenticated,
    NotFound,
)
from devbox_service.ids import new_id

ADMIN_USER = "admin"
ADMIN_ORG = "default"
ADMIN_KEY_FILE = "admin.key"


class IdentityService:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store
        self.agent_tokens = AgentTokenStore(store.database)

    async def authenticate(self, bearer: str | None) -> Principal:
        """Resolve a bearer secret to a principal, or raise NotAuthenticated (401)."""
        if not bearer:
            raise NotAuthenticated("missing bearer token: send 'Authorization: Bearer <key>'")
        digest = tokens.hash_secret(bearer)
        if bearer.startswith(tokens.AGENT_TOKEN_PREFIX):
            principal = await self.agent_tokens.principal_for_hash(digest)
            if principal is None:
                raise NotAuthenticated("invalid or revoked agent token")
            await self.agent_tokens.touch(principal.credential_id)
            return principal
        principal = await self.store.principal_for_key_hash(digest)
        if principal is None:
            raise NotAuthenticated("invalid or revoked API key")
        await self.store.touch_key(principal.credential_id)
        return principal

    async def create_user(
        self, name: str, *, org: str | None = None, role: Role = Role.MEMBER, is_admin: bool = False
    ) -> User:
        """A user and their membership; a new org is created (user as owner) if none named."""
        _check_name("user", name)
        if await self.store.user_by_name(name):
            raise Conflict(f"user {name!r} already exists")
        now = time.time()
        user = User(id=new_id("user"), name=name, is_admin=is_admin, created_at=now)
        existing_org = await self.store.org_by_name(org) if org else None
        async with self.store.database.transaction() as tx:
            await self.store.insert_user(tx, user)
            if existing_org is None:
                org_name = org or name
                _check_name("org", org_name)
                new_org = Org(id=new_id("org"), name=org_name, created_at=now)
                await self.store.insert_org(tx, new_org)
                await self.store.upsert_member(tx, new_org.id, user.id, Role.OWNER)
            else:
                await self.store.upsert_member(tx, existing_org.id, user.id, role)
        return user

    async def create_org(self, name: str, *, owner: str) -> Org:
        _check_name("org", name)
        if await self.store.org_by_name(name):
            raise Conflict(f"org {name!r} already exists")
        user = await self._user(owner)
        org = Org(id=new_id("org"), name=name, created_at=time.time())
        async with self.store.database.transaction() as tx:
            await self.store.insert_org(tx, org)
            await self.store.upsert_member(tx, org.id, user.id, Role.OWNER)
        return org

    async def add_member(self, org_name: str, user_name: str, role: Role) -> Membership:
        org = await self._org(org_name)
        user = await self._user(user_name)
        async with self.store.database.transaction() as tx:
            await self.store.upsert_member(tx, org.id, user.id, role)
        return Membership(
            org_id=org.id, org_name=org.name, user_id=user.id, user_name=user.name, role=role
        )

    async def remove_member(self, org_name: str, user_name: str) -> None:
        """The user leaves the org: their keys for it and the agent tokens they minted there
        stop working at once (every credential is checked against the membership), and the
        SSH gateway refuses the devboxes' credentials they own. Raises NotFound, Conflict
        (the org's last owner)."""
        org = await self._org(org_name)
        user = await self._user(user_name)
        role = await self.store.role_in(org.id, user.id)
        if role is None:
            raise NotFound(f"user {user_name!r} is not a member of org {org_name!r}")
        owners = [m for m in await self.store.memberships(org.id) if m.role is Role.OWNER]
        if role is Role.OWNER and len(owners) == 1:
            raise Conflict(f"{user_name!r} is the last owner of {org_name!r}: add another first")
        async with self.store.database.transaction() as tx:
            await self.store.delete_member(tx, org.id, user.id)

    async def is_member(self, org_id: str, user_id: str) -> bool:
        return await self.store.role_in(org_id, user_id) is not None

    async def issue_key(
        self, user_name: str, *, org: str | None = None, name: str = ""
    ) -> IssuedKey:
        """A new API key for a user acting in one org (their first org if none named)."""
        user = await self._user(user_name)
        memberships = [m for m in await self.store.memberships() if m.user_id == user.id]
        if org is not None:
            memberships = [m for m in memberships if m.org_name == org]
        if not memberships:
            where = f"org {org!r}" if org else "any org"
            raise InvalidInput(f"user {user_name!r} is not a member of {where}")
        membership = memberships[0]
        secret = tokens.new_secret(tokens.API_KEY_PREFIX)
        key_id = new_id("key")
        async with self.store.database.transaction() as tx:
            await self.store.insert_key(
                tx,
                key_id=key_id,
                user_id=user.id,
                org_id=membership.org_id,
                key_hash=tokens.hash_secret(secret),
                prefix=tokens.display_prefix(secret),
                name=name,
                created_at=time.time(),
            )
        record = await self.store.key(key_id)
        assert record is not None
        return IssuedKey(record=record, key=secret)

    async def revoke_key(self, key_id: str) -> None:
        if await self.store.key(key_id) is None:
            raise NotFound.of("API key", key_id)
        await self.store.revoke_key(key_id)

    async def user_names(self) -> dict[str, str]:
        """Every user's name by id (the dashboard shows owners by name)."""
        return {user.id: user.name for user in await self.store.users()}

    async def keys(self) -> list[ApiKeyRecord]:
        return await self.store.keys()

    async def bootstrap(self, data_dir: Path) -> IssuedKey | None:
        """On the first start with an empty store: an admin user, an org, and a key file."""
        if not await self.store.is_empty():
            return None
        try:
            await self.create_user(ADMIN_USER, org=ADMIN_ORG, is_admin=True)
        except AlreadyExists:
            return None  # another replica starting beside this one bootstrapped the store
        issued = await self.issue_key(ADMIN_USER, name="first admin key")
        write_private_file(data_dir / ADMIN_KEY_FILE, issued.key + "\n")
        return issued

    async def _user(self, name: str) -> User:
        user = await self.store.user_by_name(name)
        if user is None:
            raise NotFound.of("user", name)
        return user

    async def _org(self, name: str) -> Org:
        org = await self.store.org_by_name(name)
        if org is None:
            raise NotFound.of("org", name)
        return org


def write_private_file(path: Path, content: str) -> None:
    """Create a file readable by its owner only, with no window where it is wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode())
    finally:
        os.close(fd)


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInput(
            f"{kind} name {name!r} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )
