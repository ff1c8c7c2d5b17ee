"""The route rules as pure logic: every combination of principal and rule."""

from __future__ import annotations

import pytest
import support

from devbox_service.auth.guards import ADMIN, USER, agent_scope, check
from devbox_service.auth.models import Principal, PrincipalKind
from devbox_service.auth.scopes import SECRET_SCOPES, AgentScope, granted
from devbox_service.errors import PermissionDenied


def principal(
    kind: PrincipalKind = PrincipalKind.USER,
    *,
    is_admin: bool = False,
    scopes: frozenset[str] = frozenset(),
    devbox_id: str | None = None,
) -> Principal:
    return support.principal(kind=kind, is_admin=is_admin, scopes=scopes, devbox_id=devbox_id)


def test_user_keys_pass_user_rules_and_scoped_rules() -> None:
    check(USER, principal(), "dbx_1")
    check(agent_scope(AgentScope.SUMMARY_READ), principal(), "dbx_1")


def test_admin_rule_needs_an_administrator() -> None:
    with pytest.raises(PermissionDenied, match="administrators"):
        check(ADMIN, principal(), None)
    check(ADMIN, principal(is_admin=True), None)


def test_agent_tokens_are_refused_by_rules_without_a_scope() -> None:
    agent = principal(
        PrincipalKind.AGENT, scopes=frozenset({"devbox:summary:read"}), devbox_id="d1"
    )
    with pytest.raises(PermissionDenied, match="Agent tokens cannot"):
        check(USER, agent, "d1")


def test_agent_token_needs_the_scope_and_names_it() -> None:
    agent = principal(
        PrincipalKind.AGENT, scopes=frozenset({"devbox:summary:read"}), devbox_id="d1"
    )
    check(agent_scope(AgentScope.SUMMARY_READ), agent, "d1")
    with pytest.raises(PermissionDenied, match=r"Insufficient scope.*devbox:snapshot:write"):
        check(agent_scope(AgentScope.SNAPSHOT_WRITE), agent, "d1")


def test_agent_token_is_bound_to_its_devbox() -> None:
    agent = principal(
        PrincipalKind.AGENT, scopes=frozenset({"devbox:summary:read"}), devbox_id="d1"
    )
    with pytest.raises(PermissionDenied, match="different devbox"):
        check(agent_scope(AgentScope.SUMMARY_READ), agent, "d2")


def test_injected_tokens_reach_secrets_only_when_names_are_given() -> None:
    assert AgentScope.SECRETS_READ in granted(None, injected=False, secret_names=None)
    injected = granted(None, injected=True, secret_names=None)
    assert not SECRET_SCOPES & set(injected) and AgentScope.SUMMARY_READ in injected
    asked = [AgentScope.SECRETS_READ, AgentScope.SUMMARY_READ]
    assert granted(asked, injected=True, secret_names=None) == ["devbox:summary:read"]
    assert AgentScope.SECRETS_READ in granted(asked, injected=True, secret_names=["A"])
