"""The devbox state machine: which action may start from which status, in one table.

`DevboxCore` alone carries the actions out (and alone writes statuses): requests, wake on
SSH/HTTP, recovery, standby and the TTL reaper all go through it, so the table holds for all.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from devbox_service.backends.base import InstanceState
from devbox_service.devboxes.models import DevboxRecord, DevboxStatus, EventType
from devbox_service.errors import Conflict


class Action(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    SAVE = "save"
    BRANCH = "branch"
    USE = "use"  # anything that needs the guest up: uploads, tmux, SSH from the service
    DELETE = "delete"
    # what the service does by itself, never asked for over the API
    STANDBY = "standby"  # a paused devbox's memory to disk (idle policy); still `paused`
    STOP_VM = "stop_vm"  # an operator's `stop-vms`: paused first if ready, then standby
    FAIL = "fail"  # the VM crashed, was lost, or did not boot: `error` with the reason
    ADOPT = "adopt"  # after a restart: the status the VM was found in


class Transition(NamedTuple):
    allowed_from: frozenset[DevboxStatus]
    no_op_in: frozenset[DevboxStatus] = frozenset()  # answered at once, unchanged
    during: DevboxStatus | None = None  # the status while the backend works
    after: DevboxStatus | None = None  # the status once it is done
    event: EventType | None = None  # the timeline entry it leaves
    failed: DevboxStatus | None = None  # what a failure leaves (None: the status before)


ALL = frozenset(DevboxStatus)

TRANSITIONS: dict[Action, Transition] = {
    Action.PAUSE: Transition(
        frozenset({DevboxStatus.READY}),
        frozenset({DevboxStatus.PAUSED}),
        DevboxStatus.PAUSING,
        DevboxStatus.PAUSED,
        EventType.PAUSE,
    ),
    Action.RESUME: Transition(  # from error: a VM whose process died starts again
        frozenset({DevboxStatus.PAUSED, DevboxStatus.ERROR}),
        frozenset({DevboxStatus.READY}),
        DevboxStatus.RESUMING,
        DevboxStatus.READY,
        EventType.RESUME,
    ),
    Action.REBOOT: Transition(  # answered once `rebooting`; finished in the background
        frozenset({DevboxStatus.READY, DevboxStatus.ERROR}),
        during=DevboxStatus.REBOOTING,
        after=DevboxStatus.READY,
        event=EventType.REBOOT,
        failed=DevboxStatus.ERROR,  # the guest is gone half-way: nothing to go back to
    ),
    Action.SAVE: Transition(
        frozenset({DevboxStatus.READY, DevboxStatus.PAUSED}), event=EventType.SAVE
    ),
    Action.BRANCH: Transition(
        frozenset({DevboxStatus.READY, DevboxStatus.PAUSED}), event=EventType.BRANCH
    ),
    Action.USE: Transition(frozenset({DevboxStatus.READY})),
    Action.DELETE: Transition(ALL, during=DevboxStatus.DELETING),
    # background passes skip a devbox they do not fit (no-op), they never answer a 409
    Action.STANDBY: Transition(
        frozenset({DevboxStatus.PAUSED}), ALL - {DevboxStatus.PAUSED}, after=DevboxStatus.PAUSED
    ),
    Action.STOP_VM: Transition(
        frozenset({DevboxStatus.READY, DevboxStatus.PAUSED}),
        ALL - {DevboxStatus.READY, DevboxStatus.PAUSED},
        after=DevboxStatus.PAUSED,
    ),
    Action.FAIL: Transition(  # the first reason stays; a deletion is not interrupted
        ALL - {DevboxStatus.ERROR, DevboxStatus.DELETING},
        frozenset({DevboxStatus.ERROR, DevboxStatus.DELETING}),
        after=DevboxStatus.ERROR,
    ),
    Action.ADOPT: Transition(  # work under way (rebooting, resuming, deleting) is finished
        ALL - {DevboxStatus.REBOOTING, DevboxStatus.RESUMING, DevboxStatus.DELETING}
    ),
}

STATUS_OF_INSTANCE = {
    InstanceState.RUNNING: DevboxStatus.READY,
    InstanceState.PAUSED: DevboxStatus.PAUSED,
    InstanceState.STANDBY: DevboxStatus.PAUSED,  # standby is an implementation detail of "paused"
}
"""What a VM found at start-up means for its record."""

SETTLING = frozenset({DevboxStatus.PROVISIONING, DevboxStatus.RESUMING, DevboxStatus.REBOOTING})
"""Statuses a devbox leaves by itself: a caller that needs the guest may wait them out."""


def require(record: DevboxRecord, action: Action) -> bool:
    """True when the action must run, False for a harmless no-op; Conflict (409) otherwise."""
    transition = TRANSITIONS[action]
    if record.status in transition.no_op_in:
        return False
    if record.status not in transition.allowed_from:
        raise Conflict(
            f"cannot {action.value} devbox {record.id}: it is {record.status.value}",
            state=record.status.value,
        )
    return True
