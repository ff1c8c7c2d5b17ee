"""Attackers against the bounds on what callers hand the service: a tmux wait pattern that
would cost the service memory and time."""

from __future__ import annotations

import asyncio
import tracemalloc

from support import Api, insert_devbox

COSTLY = "(?:a{1000}){300}"  # 16 bytes: a 300,000-character literal once compiled


async def test_a_costly_wait_pattern_is_refused_before_it_costs_anyone(api: Api) -> None:
    """A member posts a wait pattern for their own devbox: it is refused from its text, with
    422 naming the limit, while another tenant's request answers and the service's memory
    stays where it was (no VM is needed: nothing may reach the guest)."""
    attacker = await api.new_user("pattern-attacker")
    neighbour = await api.new_user("pattern-neighbour")
    member = await api.services.identities.authenticate(attacker)
    devbox_id = await insert_devbox(api, member.user_id, member.org_id)
    attacks = [
        api.client.post(
            f"/api/devboxes/{devbox_id}/tmux/panes/1/wait",
            json={"pattern": COSTLY},
            headers=api.auth(attacker),
        )
        for _ in range(3)
    ]
    tracemalloc.start()
    try:
        *refused, other = await asyncio.gather(
            *attacks, api.client.get("/api/devboxes", headers=api.auth(neighbour))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for answer in refused:
        assert answer.status_code == 422, answer.text
        (problem,) = answer.json()["detail"]
        assert "over 10000" in problem["msg"] and "pattern" in problem["msg"]
    assert other.status_code == 200
    assert peak < 20 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated answering the attack"
