"""The one policy table: README shows it as it is, and its rules read as promised."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import principal

from devbox_service.auth.models import Principal, PrincipalKind, Role
from devbox_service.auth.policy import POLICY, Act, Relation, authorize, markdown_table
from devbox_service.errors import NotFound, PermissionDenied

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_shows_the_table_as_written() -> None:
    assert markdown_table() in README.read_text()


def person(user: str, role: Role = Role.MEMBER, org: str = "org_1") -> Principal:
    return principal(user_id=user, user_name=user, org_id=org, role=role)


def agent(devbox: str, *scopes: str) -> Principal:
    return principal(
        kind=PrincipalKind.AGENT, user_id="owner", devbox_id=devbox, scopes=frozenset(scopes)
    )


def decide(caller: Principal, act: Act) -> str:
    try:
        authorize(
            caller,
            act,
            user_id="owner",
            org_id="org_1",
            devbox_id="devbox_1",
            resource=("devbox", "devbox_1"),
        )
    except NotFound:
        return "404"
    except PermissionDenied:
        return "403"
    return "ok"


@pytest.mark.parametrize("act", list(Act))
def test_each_caller_gets_what_its_row_says(act: Act) -> None:
    rule = POLICY[act]
    assert decide(person("owner", Role.MEMBER), act) == "ok"  # the owner may do everything
    assert decide(person("someone", Role.ADMIN), act) == (
        "ok" if Relation.ORG_ADMIN in rule.who else "403"
    )
    assert decide(person("someone"), act) == ("ok" if Relation.MEMBER in rule.who else "403")
    assert decide(person("owner", Role.OWNER, org="org_2"), act) == "404"  # another org
    with_scope = agent("devbox_1", *([rule.scope] if rule.scope else []))
    assert decide(with_scope, act) == ("ok" if rule.scope else "403")
    assert decide(agent("devbox_2", "devbox:summary:read"), act) == "404"


def test_a_member_watches_but_never_runs_code_or_copies_memory() -> None:
    member = person("someone")
    assert [a for a in Act if decide(member, a) == "ok"] == [
        Act.VIEW,
        Act.WATCH,
        Act.SNAPSHOT_VIEW,
        Act.TEMPLATE_USE,  # see, build, start and share the org's templates
        Act.ALIAS_VIEW,
    ]
    admin = person("someone", Role.ADMIN)
    for act in (Act.EXEC, Act.TYPE, Act.SSH, Act.UPLOAD, Act.SAVE, Act.BRANCH, Act.EXPOSE):
        assert decide(admin, act) == "403", act
    assert decide(admin, Act.TEMPLATE_SECRETS) == "403", "an admin is asked like anyone"
