"""How a build page folds a run's events into what it shows (`fold_events`, pure), and what
the page hands its script: the events that end a run, from the one terminal set."""

from __future__ import annotations

import re
from typing import Any

from devbox_service.devbox_templates.events import (
    TERMINAL,
    AwaitingInputEvent,
    BuildEvent,
    CacheEvent,
    CancelledEvent,
    CompletedEvent,
    OutputEvent,
    PostSecretInstanceEvent,
    StartedEvent,
    StepCompletedEvent,
    StepFailedEvent,
    StepStartedEvent,
    payload,
)
from devbox_service.devbox_templates.models import StepStatus
from devbox_service.devbox_templates.schemas import TemplateStepModel
from devbox_service.web.render import STATIC_DIR, template_config
from devbox_service.web.template_pages import StepProgress, build_view, fold_events


def steps() -> list[StepProgress]:
    return [
        StepProgress(index=0, title="base packages", type="command"),
        StepProgress(index=1, title="install app", type="command"),
        StepProgress(index=2, title="TOKEN", type="exportSecret"),
        StepProgress(index=3, title="serve", type="command"),
    ]


def awaiting(name: str) -> AwaitingInputEvent:
    return AwaitingInputEvent(
        index=2,
        secretName=name,
        hasSaved=False,
        optional=False,
        defaultAction="wait",
        deadlineAt=0,
        countdownSeconds=300,
        runId="run_1",
    )


def states(progress_steps: list[StepProgress]) -> list[str]:
    return [step.state for step in progress_steps]


def test_no_events_leave_every_step_pending_and_the_build_running() -> None:
    progress = fold_events(steps(), [])
    assert states(progress.steps) == ["pending"] * 4
    assert progress.finished is None and progress.awaiting_secret is None
    assert progress.devbox_id is None and progress.message == ""


def test_a_successful_build_folds_into_step_states_output_and_its_devbox() -> None:
    events: list[BuildEvent] = [
        StartedEvent(totalSteps=4, message="Building web: 4 steps"),
        CacheEvent(index=0, snapshotId="snap_0"),
        StepStartedEvent(index=1, stepType="command"),
        OutputEvent(index=1, content="Reading lists...\n"),
        OutputEvent(index=1, content="Done.\n"),
        StepCompletedEvent(index=1, snapshotId="snap_1"),
        StepStartedEvent(index=2, stepType="exportSecret"),
        awaiting("TOKEN"),
    ]
    waiting = fold_events(steps(), events)
    assert states(waiting.steps) == ["cached", "done", "running", "pending"]
    assert waiting.steps[1].output == "Reading lists...\nDone.\n"
    assert waiting.steps[0].output == "" and waiting.steps[2].output == ""
    assert waiting.awaiting_secret == "TOKEN", "the page asks for the secret"
    assert waiting.finished is None and waiting.message == "Building web: 4 steps"

    events += [
        PostSecretInstanceEvent(index=2, message="secret TOKEN received; resuming"),
        StepCompletedEvent(index=2, snapshotId="snap_2"),
        StepStartedEvent(index=3, stepType="command"),
        StepCompletedEvent(index=3, snapshotId="snap_3"),
        CompletedEvent(instanceId="devbox_123", instance={}, http_services=[], warnings=[]),
    ]
    done = fold_events(steps(), events)
    assert states(done.steps) == ["cached", "done", "done", "done"]
    assert done.awaiting_secret is None, "answering the secret clears the question"
    assert done.finished == "completed"
    assert done.devbox_id == "devbox_123"
    assert done.message == "secret TOKEN received; resuming", "the last event that said one"


def test_a_failed_step_ends_the_build_with_its_message() -> None:
    events: list[BuildEvent] = [
        StepStartedEvent(index=0, stepType="command"),
        OutputEvent(index=0, content="E: unable to locate package\n"),
        StepFailedEvent(index=0, message="step 0 exited with status 100"),
    ]
    progress = fold_events(steps(), events)
    assert states(progress.steps) == ["failed", "pending", "pending", "pending"]
    assert progress.steps[0].output == "E: unable to locate package\n"
    assert progress.finished == "step_failed"
    assert progress.message == "step 0 exited with status 100"
    assert progress.devbox_id is None


def test_a_build_waiting_for_a_secret_stops_asking_when_it_ends() -> None:
    events: list[BuildEvent] = [
        StepStartedEvent(index=2, stepType="exportSecret"),
        awaiting("TOKEN"),
        CancelledEvent(message="cancelled by the user"),
    ]
    progress = fold_events(steps(), events)
    assert progress.finished == "cancelled" and progress.awaiting_secret is None
    assert progress.message == "cancelled by the user"


def test_events_for_unknown_steps_change_nothing() -> None:
    events: list[BuildEvent] = [
        StepStartedEvent(index=9, stepType="command"),
        OutputEvent(index=9, content="lost"),
        StepFailedEvent(index=-1, message="secret TOKEN is required and cannot be skipped"),
    ]
    progress = fold_events(steps(), events)
    assert states(progress.steps) == ["pending"] * 4
    assert all(step.output == "" for step in progress.steps)
    assert progress.finished == "step_failed"


# the page


def step_models() -> list[TemplateStepModel]:
    return [
        TemplateStepModel(
            id=f"step_{s.index}",
            index=s.index,
            type=s.type,
            title=s.title,
            status=StepStatus.PENDING,
            updated_at=0.0,
        )
        for s in steps()
    ]


def render_build_page(history: list[dict[str, Any]]) -> str:
    """build.html as the build page renders it (the same context, the app's engine)."""
    engine = template_config().engine_instance
    html: str = engine.get_template("build.html").render(
        template={"id": "tpl_1", "name": "web"},
        run_id="run_1",
        user=None,
        csrf_token="",
        notice=None,
        **build_view(step_models(), history),
    )
    return html


def test_the_page_hands_its_script_the_one_terminal_set() -> None:
    history = [payload(StepStartedEvent(index=0, stepType="command"))]
    html = render_build_page(history)

    steps_list = re.search(r'<ol id="build-steps"[^>]*>', html)
    assert steps_list, html
    terminal = re.search(r'data-terminal="([^"]*)"', steps_list.group(0))
    assert terminal, steps_list.group(0)
    assert frozenset(terminal.group(1).split()) == TERMINAL
    assert 'data-seen="1"' in steps_list.group(0)
    script = (STATIC_DIR / "build.js").read_text()
    assert "list.dataset.terminal" in script, "the script stops where the server says"
    assert not re.search(r"\[\s*\"completed\"", script), "and keeps no list of its own"


def test_the_page_folds_what_it_can_read_and_counts_every_stored_event() -> None:
    history = [
        payload(StepStartedEvent(index=0, stepType="command")),
        {"type": "progress", "index": 0, "percent": 50},  # an event this version cannot read
        payload(OutputEvent(index=0, content="step one says hi\n")),
    ]
    html = render_build_page(history)

    assert 'data-seen="3"' in html, "the script skips all three when the stream replays them"
    assert '<li id="step-0" data-state="running">' in html
    assert "step one says hi" in html
    assert 'data-finished=""' in html and "Running…" in html
