"""The devbox state machine's table: every action against every status."""

from __future__ import annotations

import pytest
from support import devbox_record

from devbox_service.devboxes.lifecycle import TRANSITIONS, Action, require
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus
from devbox_service.errors import Conflict

S = DevboxStatus

# action -> (statuses where it runs, statuses where it is a harmless no-op)
EXPECTED: dict[Action, tuple[set[DevboxStatus], set[DevboxStatus]]] = {
    Action.PAUSE: ({S.READY}, {S.PAUSED}),
    Action.RESUME: ({S.PAUSED, S.ERROR}, {S.READY}),
    Action.REBOOT: ({S.READY, S.ERROR}, set()),
    Action.SAVE: ({S.READY, S.PAUSED}, set()),
    Action.BRANCH: ({S.READY, S.PAUSED}, set()),
    Action.USE: ({S.READY}, set()),
    Action.DELETE: (set(S), set()),
    Action.STANDBY: ({S.PAUSED}, set(S) - {S.PAUSED}),
    Action.STOP_VM: ({S.READY, S.PAUSED}, set(S) - {S.READY, S.PAUSED}),
    Action.FAIL: (set(S) - {S.ERROR, S.DELETING}, {S.ERROR, S.DELETING}),
    Action.ADOPT: (set(S) - {S.REBOOTING, S.RESUMING, S.DELETING}, set()),
}


def record(status: DevboxStatus) -> DevboxRecord:
    return devbox_record(status=status)


def test_every_action_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Action) == set(EXPECTED)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("status", list(DevboxStatus))
def test_require_runs_skips_or_refuses_naming_the_state(
    action: Action, status: DevboxStatus
) -> None:
    runs, no_op = EXPECTED[action]
    if status in runs:
        assert require(record(status), action) is True
    elif status in no_op:
        assert require(record(status), action) is False
    else:
        with pytest.raises(Conflict) as refused:
            require(record(status), action)
        assert refused.value.state == status.value
        assert status.value in refused.value.message and action.value in refused.value.message


def test_actions_that_change_the_vm_say_their_passing_and_final_status() -> None:
    for action in (Action.PAUSE, Action.RESUME, Action.REBOOT):
        transition = TRANSITIONS[action]
        assert transition.during is not None and transition.after is not None
        assert transition.event is not None and transition.event.value == action.value
