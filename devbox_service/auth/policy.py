"""Who may do what to a devbox, a snapshot, a template or a share alias: the one table of
access rules.

Every surface asks it: the API routes (their guard names the action, and an agent token's
scope comes from here), the instance API, pages, previews, the SSH gateway and tmux. The
devbox front door (`devboxes/core.py`) decides with `authorize`; nothing else writes an
owner check. README's security model shows this table; the access-matrix test expects what
it says of every route.

How the caller stands to a resource:
- owner: the user whose devbox (or snapshot) it is, who wrote the template's steps, who made
  the alias; with a user key or a page session;
- org admin: an owner or admin of the resource's organization who is not its owner;
- member: anyone else in the organization;
- agent: an agent token bound to this devbox, with the rule's scope;
- outsider (another organization): 404 for everything, so nothing says what exists.

A member watches and reads: the devbox, its timeline, its terminals' screens, its snapshots.
A member does not run code in another person's devbox (exec, typing, SSH, uploads), copy its
memory (save, branch, boot its saves), expose its ports, or decide its life (pause, TTL,
delete): an org admin may do the last (it is the org's machine) but not the others, since
those read the owner's secrets and memory.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.scopes import AgentScope
from devbox_service.errors import NotFound, PermissionDenied


class Relation(enum.StrEnum):
    OWNER = "owner"
    ORG_ADMIN = "org admin"
    MEMBER = "member"
    AGENT = "agent token"


class Act(enum.StrEnum):
    """An action on one devbox (or, for the SNAPSHOT_ ones, on one snapshot)."""

    VIEW = "view"  # the devbox, summary, timeline, HTTP services, disk resizes
    WATCH = "watch"  # its tmux sessions and panes: list, screens, streams, waits
    TYPE = "type"  # tmux keys, new/renamed/killed sessions, installing tmux
    EXEC = "exec"  # run a command in the guest
    UPLOAD = "upload"  # write files into the guest
    SSH = "ssh"  # SSH credentials, the SSH key, logins through the gateway
    OPERATE = "operate"  # pause, resume, reboot, stop, start
    CONFIGURE = "configure"  # metadata, display name, wake-on
    SET_TTL = "set ttl"
    RESIZE = "resize"  # vCPUs, memory, disk
    DELETE = "delete"
    SAVE = "save"  # a snapshot of memory and disk
    BRANCH = "branch"  # live copies, memory included
    EXPOSE = "expose"  # expose or unexpose HTTP services
    WEAKEN_PREVIEW = "weaken preview"  # make an api_key port reachable without a key
    AGENT_TOKENS = "agent tokens"  # mint, list, revoke
    NOTIFY = "notify"  # post a notification about the devbox
    SNAPSHOT_VIEW = "view snapshot"
    SNAPSHOT_BOOT = "boot snapshot"  # start a devbox from a saved snapshot (its memory)
    SNAPSHOT_EDIT = "edit snapshot"  # metadata and TTL
    SNAPSHOT_DELETE = "delete snapshot"
    TEMPLATE_USE = "use template"  # see, build, start from, share (owner: its author)
    TEMPLATE_EDIT = "edit template"  # its steps, name, base; delete it
    TEMPLATE_SECRETS = "get saved secrets unasked"  # starting it writes the starter's secrets
    ALIAS_VIEW = "see alias"  # an org share link (a public one: anyone, signed in or not)
    ALIAS_CHANGE = "move or delete alias"  # a share link of the org (its creator is "owner")


class Rule(NamedTuple):
    who: frozenset[Relation]
    scope: AgentScope | None = None  # an agent token of the devbox with it may, too
    refusal: str = ""  # completes "only the devbox's owner ... may ..."


_OWNER = frozenset({Relation.OWNER})
_ADMINS = frozenset({Relation.OWNER, Relation.ORG_ADMIN})
_ORG = frozenset({Relation.OWNER, Relation.ORG_ADMIN, Relation.MEMBER})

POLICY: dict[Act, Rule] = {
    Act.VIEW: Rule(_ORG, AgentScope.SUMMARY_READ),
    Act.WATCH: Rule(_ORG),
    Act.TYPE: Rule(_OWNER, refusal="type into its terminals"),
    Act.EXEC: Rule(_OWNER, refusal="run commands in it"),
    Act.UPLOAD: Rule(_OWNER, refusal="upload files into it"),
    Act.SSH: Rule(_OWNER, refusal="reach it over SSH or read its SSH credentials"),
    Act.OPERATE: Rule(_ADMINS, refusal="pause, resume, reboot, stop or start it"),
    Act.CONFIGURE: Rule(_ADMINS, AgentScope.METADATA_WRITE, refusal="change its settings"),
    Act.SET_TTL: Rule(_ADMINS, refusal="set its TTL"),
    Act.RESIZE: Rule(_ADMINS, refusal="change its size"),
    Act.DELETE: Rule(_ADMINS, refusal="delete it"),
    Act.SAVE: Rule(_OWNER, AgentScope.SNAPSHOT_WRITE, refusal="save it (its memory)"),
    Act.BRANCH: Rule(_OWNER, refusal="branch it (its memory)"),
    Act.EXPOSE: Rule(_OWNER, AgentScope.HTTP_WRITE, refusal="expose its ports"),
    Act.WEAKEN_PREVIEW: Rule(_OWNER, refusal="open a port that asks for a key to anyone"),
    Act.AGENT_TOKENS: Rule(_OWNER, refusal="manage its agent tokens"),
    Act.NOTIFY: Rule(_OWNER, AgentScope.NOTIFICATIONS_WRITE, refusal="post its notifications"),
    # an agent token may read and label the snapshots of its own devbox that it saves
    Act.SNAPSHOT_VIEW: Rule(_ORG, AgentScope.SNAPSHOT_WRITE),
    Act.SNAPSHOT_BOOT: Rule(_OWNER, refusal="boot it (it holds the owner's memory)"),
    Act.SNAPSHOT_EDIT: Rule(_ADMINS, AgentScope.SNAPSHOT_WRITE, refusal="change it"),
    Act.SNAPSHOT_DELETE: Rule(_ADMINS, refusal="delete it"),
    Act.TEMPLATE_USE: Rule(_ORG),
    # steps run as root in everyone's devbox started from the template: a member who could
    # change them could harvest the author's secrets at the author's next start
    Act.TEMPLATE_EDIT: Rule(_ADMINS, refusal="change or delete it"),
    # the author's steps may read the starter's secrets: only the author is not asked
    Act.TEMPLATE_SECRETS: Rule(_OWNER, refusal="be given secrets without naming them"),
    Act.ALIAS_VIEW: Rule(_ORG),
    Act.ALIAS_CHANGE: Rule(
        _ADMINS, refusal="move or delete it (this alias is taken: choose another)"
    ),
}

SNAPSHOT_ACTS = frozenset(a for a in Act if a.name.startswith("SNAPSHOT_"))
ORG_RESOURCE_ACTS = frozenset(
    {Act.TEMPLATE_USE, Act.TEMPLATE_EDIT, Act.TEMPLATE_SECRETS, Act.ALIAS_VIEW, Act.ALIAS_CHANGE}
)
DEVBOX_ACTS = frozenset(Act) - SNAPSHOT_ACTS - ORG_RESOURCE_ACTS


def relation(
    principal: Principal, *, user_id: str, org_id: str, devbox_id: str | None
) -> Relation | None:
    """How the caller stands to a resource of `user_id` in `org_id` (None: an outsider).
    An agent token relates only to its own devbox."""
    if principal.kind is PrincipalKind.ANONYMOUS or principal.org_id != org_id:
        return None
    if principal.kind is PrincipalKind.AGENT:
        return (
            Relation.AGENT if devbox_id is not None and devbox_id == principal.devbox_id else None
        )
    if principal.user_id == user_id:
        return Relation.OWNER
    return Relation.ORG_ADMIN if principal.role.manages_org else Relation.MEMBER


def allows(rule: Rule, standing: Relation | None, principal: Principal) -> bool:
    if standing is Relation.AGENT:
        return rule.scope is not None and rule.scope in principal.scopes
    return standing is not None and standing in rule.who


class Owned(Protocol):
    """A devbox or snapshot record: whose it is."""

    @property
    def user_id(self) -> str: ...

    @property
    def org_id(self) -> str: ...


def permits(principal: Principal, act: Act, record: Owned, devbox_id: str | None = None) -> bool:
    """Whether the table lets the caller do `act` (for pages: which buttons to show)."""
    devbox = devbox_id if devbox_id is not None else getattr(record, "id", None)
    standing = relation(principal, user_id=record.user_id, org_id=record.org_id, devbox_id=devbox)
    return allows(POLICY[act], standing, principal)


def authorize(
    principal: Principal,
    act: Act,
    *,
    user_id: str,
    org_id: str,
    devbox_id: str | None,
    resource: tuple[str, str],
) -> None:
    """Raises NotFound (an outsider, or an agent token of another devbox: nothing says the
    resource exists) or PermissionDenied naming who may; returns when the table allows.
    `resource` is (kind, id) for the error, e.g. ("devbox", "devbox_…")."""
    standing = relation(principal, user_id=user_id, org_id=org_id, devbox_id=devbox_id)
    if standing is None:
        raise NotFound.of(*resource)
    rule = POLICY[act]
    if allows(rule, standing, principal):
        return
    kind = resource[0]
    if standing is Relation.AGENT:
        needed = f"'{rule.scope}'" if rule.scope else "a user API key"
        raise PermissionDenied(
            f"this agent token may not {act.value} the {kind}: it needs {needed}"
        )
    who = "owner" if rule.who == _OWNER else "owner or an org admin"
    raise PermissionDenied(f"only the {kind}'s {who} may {rule.refusal or act.value}")


def markdown_table() -> str:
    """The table as README shows it (a test keeps README equal to this)."""
    people = (Relation.OWNER, Relation.ORG_ADMIN, Relation.MEMBER)
    lines = [
        "| action | owner | org admin | member | agent token of the devbox |",
        "|---|---|---|---|---|",
    ]
    for act, rule in POLICY.items():
        cells = ["yes" if r in rule.who else "no" for r in people]
        cells.append(f"`{rule.scope}`" if rule.scope else "no")
        lines.append(f"| {act.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
