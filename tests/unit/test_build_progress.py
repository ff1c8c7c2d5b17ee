"""How a build page folds a run's events into what it shows (`fold_events`, pure)."""

from __future__ import annotations

from typing import Any

from devbox_service.web.template_pages import StepProgress, fold_events


def steps() -> list[StepProgress]:
    return [
        StepProgress(index=0, title="base packages", type="command"),
        StepProgress(index=1, title="install app", type="command"),
        StepProgress(index=2, title="TOKEN", type="exportSecret"),
        StepProgress(index=3, title="serve", type="command"),
    ]


def states(progress_steps: list[StepProgress]) -> list[str]:
    return [step.state for step in progress_steps]


def test_no_events_leave_every_step_pending_and_the_build_running() -> None:
    progress = fold_events(steps(), [])
    assert states(progress.steps) == ["pending"] * 4
    assert progress.finished is None and progress.awaiting_secret is None
    assert progress.devbox_id is None and progress.message == ""


def test_a_successful_build_folds_into_step_states_output_and_its_devbox() -> None:
    events: list[dict[str, Any]] = [
        {"type": "cache", "index": 0},
        {"type": "step_started", "index": 1},
        {"type": "output", "index": 1, "content": "Reading lists...\n"},
        {"type": "output", "index": 1, "content": "Done.\n"},
        {"type": "step_completed", "index": 1},
        {"type": "step_started", "index": 2},
        {"type": "awaiting_input", "index": 2, "secretName": "TOKEN"},
    ]
    waiting = fold_events(steps(), events)
    assert states(waiting.steps) == ["cached", "done", "running", "pending"]
    assert waiting.steps[1].output == "Reading lists...\nDone.\n"
    assert waiting.steps[0].output == "" and waiting.steps[2].output == ""
    assert waiting.awaiting_secret == "TOKEN", "the page asks for the secret"
    assert waiting.finished is None

    events += [
        {"type": "step_completed", "index": 2},
        {"type": "step_started", "index": 3},
        {"type": "step_completed", "index": 3},
        {"type": "completed", "instanceId": "devbox_123", "message": "ready to start"},
    ]
    done = fold_events(steps(), events)
    assert states(done.steps) == ["cached", "done", "done", "done"]
    assert done.awaiting_secret is None, "answering the secret clears the question"
    assert done.finished == "completed"
    assert done.devbox_id == "devbox_123"
    assert done.message == "ready to start"


def test_a_failed_step_ends_the_build_with_its_message() -> None:
    events: list[dict[str, Any]] = [
        {"type": "step_started", "index": 0},
        {"type": "output", "index": 0, "content": "E: unable to locate package\n"},
        {"type": "step_failed", "index": 0, "message": "step 0 exited with status 100"},
    ]
    progress = fold_events(steps(), events)
    assert states(progress.steps) == ["failed", "pending", "pending", "pending"]
    assert progress.steps[0].output == "E: unable to locate package\n"
    assert progress.finished == "step_failed"
    assert progress.message == "step 0 exited with status 100"
    assert progress.devbox_id is None


def test_a_build_waiting_for_a_secret_stops_asking_when_it_ends() -> None:
    events: list[dict[str, Any]] = [
        {"type": "step_started", "index": 2},
        {"type": "awaiting_input", "index": 2, "secretName": "TOKEN"},
        {"type": "cancelled", "message": "cancelled by the user"},
    ]
    progress = fold_events(steps(), events)
    assert progress.finished == "cancelled" and progress.awaiting_secret is None
    assert progress.message == "cancelled by the user"


def test_events_for_unknown_steps_or_of_unknown_types_change_nothing() -> None:
    events: list[dict[str, Any]] = [
        {"type": "step_started", "index": 9},
        {"type": "output", "index": 9, "content": "lost"},
        {"type": "output", "content": "no index"},
        {"type": "progress", "index": 0, "percent": 50},
    ]
    progress = fold_events(steps(), events)
    assert states(progress.steps) == ["pending"] * 4
    assert all(step.output == "" for step in progress.steps)
    assert progress.finished is None
