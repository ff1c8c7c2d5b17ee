"""Who is calling: principals, roles, stored identity records."""

from __future__ import annotations

import enum

import msgspec


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def manages_org(self) -> bool:
        return self in (Role.OWNER, Role.ADMIN)


class PrincipalKind(enum.StrEnum):
    USER = "user"  # a user's API key: everything the user and their org may touch
    AGENT = "agent"  # a devbox agent token: one devbox, explicit scopes
    ANONYMOUS = "anonymous"  # a public route's visitor: no account, handed to no service


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller of one request."""

    kind: PrincipalKind
    credential_id: str
    user_id: str
    user_name: str
    org_id: str
    role: Role
    is_admin: bool = False
    devbox_id: str | None = None
    scopes: frozenset[str] = frozenset()
    purpose: str = ""
    session_id: str | None = None
    secret_names: frozenset[str] | None = None  # None: every secret of the user

    @property
    def log_id(self) -> str:
        return f"{self.kind}:{self.credential_id}"


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    is_admin: bool
    created_at: float


class Org(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: float


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    org_name: str
    user_id: str
    user_name: str
    role: Role


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    user_name: str
    org_id: str
    org_name: str
    prefix: str
    name: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class IssuedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A freshly created key: the only moment its plain text exists."""

    record: ApiKeyRecord
    key: str


class AgentTokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    org_id: str
    devbox_id: str
    session_id: str | None
    scopes: list[str]
    secret_names: list[str] | None
    purpose: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    created_at: float
    devbox_id: str | None
    token_id: str
    purpose: str
    method: str
    route: str
    allowed: bool
    reason: str
