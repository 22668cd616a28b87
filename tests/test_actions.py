"""What people do to tasks: each records the intent or refuses with a clear message and
writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from bot import actions
from bot.actions import ActionError
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Nudge, Outbox, Task, TaskEvent
from storage.queue import claim_next
from storage.tasks import get_task, nudges, take_nudges, transition


def new_task(engine: Engine, state: State = State.QUEUED) -> int:
    with transaction(engine) as s:
        task = actions.add(s, repo="app", prompt="fix it", requester="U1", channel="C1").task
        assert task.id is not None
        task_id = task.id
    if state is State.QUEUED:
        return task_id
    with transaction(engine) as s:
        claim_next(s, "w1")
        path = {
            State.RUNNING: [State.RUNNING],
            State.NEEDS_INPUT: [State.RUNNING, State.NEEDS_INPUT],
            State.AWAITING_APPROVAL: [State.RUNNING, State.AWAITING_APPROVAL],
            State.MERGING: [State.RUNNING, State.AWAITING_APPROVAL, State.MERGING],
            State.MERGED: [State.RUNNING, State.AWAITING_APPROVAL, State.MERGING, State.MERGED],
            State.FAILED: [State.FAILED],
            State.REJECTED: [State.RUNNING, State.AWAITING_APPROVAL, State.REJECTED],
        }[state]
        for step in path:
            transition(s, task_id, step)
    return task_id


def snapshot(engine: Engine) -> tuple:
    with transaction(engine) as s:
        tasks = [t.model_dump() for t in s.exec(select(Task).order_by(Task.id)).all()]
        counts = [
            s.exec(select(func.count()).select_from(m)).one() for m in (TaskEvent, Nudge, Outbox)
        ]
    return tasks, counts


def run(engine: Engine, action, task_id: int, *args: str, actor: str = "U1", **options):
    with transaction(engine) as s:
        return action(s, task_id, *args, actor=actor, **options)


@pytest.mark.parametrize(
    ("action", "state", "message"),
    [
        (actions.cancel, State.MERGED, "task {id} is merged; nothing to cancel"),
        (actions.cancel, State.FAILED, "task {id} is failed; nothing to cancel"),
        (actions.cancel, State.MERGING, "task {id} is merging; too late to cancel"),
        (actions.retry, State.RUNNING, "task {id} is running; only failed, cancelled or"),
        (actions.retry, State.MERGED, "task {id} is merged; only failed"),
        (actions.approve, State.RUNNING, "task {id} is running; only tasks awaiting approval"),
        (actions.approve, State.MERGED, "task {id} is merged; it was approved by"),
        (actions.reject, State.QUEUED, "task {id} is queued; only tasks awaiting approval or"),
        (actions.reject, State.MERGED, "task {id} is merged"),
    ],
)
def test_wrong_state_is_refused_and_writes_nothing(engine: Engine, action, state, message):
    task_id = new_task(engine, state)
    before = snapshot(engine)
    with pytest.raises(ActionError, match=message.format(id=task_id)):
        run(engine, action, task_id)
    assert snapshot(engine) == before


@pytest.mark.parametrize("state", [State.MERGED, State.REJECTED, State.MERGING])
def test_nudges_on_closed_or_merging_tasks_are_refused(engine: Engine, state: State) -> None:
    task_id = new_task(engine, state)
    before = snapshot(engine)
    with pytest.raises(ActionError, match=f"task {task_id} is {state.value}"):
        run(engine, actions.nudge, task_id, "one more thing")
    assert snapshot(engine) == before


def test_cancel_of_a_waiting_task_is_immediate(engine: Engine) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    outcome = run(engine, actions.cancel, task_id, actor="U9", approvers=["U9"])
    assert outcome.task.state is State.CANCELLED
    assert outcome.task.reason == "cancelled by U9"


def test_cancel_of_a_working_task_is_a_request_for_the_worker(engine: Engine) -> None:
    task_id = new_task(engine, State.RUNNING)
    outcome = run(engine, actions.cancel, task_id, actor="U9", approvers=["U9"])
    assert "stops at the next step" in outcome.message
    with transaction(engine) as s:
        task = get_task(s, task_id)
        assert task.state is State.RUNNING  # the worker still holds it
        assert task.cancel_requested_by == "U9" and task.cancel_requested_at is not None
    with pytest.raises(ActionError, match="cancel already requested by U9"):
        run(engine, actions.cancel, task_id)


def test_approve_records_who_and_moves_to_merging_once(engine: Engine) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    outcome = run(engine, actions.approve, task_id, actor="U2", approvers=["U2", "U3"])
    assert outcome.task.state is State.MERGING
    assert outcome.task.approved_by == "U2" and outcome.task.worker_id is None
    before = snapshot(engine)
    with pytest.raises(ActionError, match=f"task {task_id} is merging; it was approved by U2"):
        run(engine, actions.approve, task_id, actor="U3", approvers=["U2", "U3"])
    assert snapshot(engine) == before


def test_nudge_while_running_waits_for_the_agents_next_turn(engine: Engine) -> None:
    task_id = new_task(engine, State.RUNNING)
    outcome = run(engine, actions.nudge, task_id, "  use httpx, not requests \x00 ", actor="U5")
    assert outcome.task.state is State.RUNNING
    with transaction(engine) as s:
        [pending] = nudges(s, task_id, pending_only=True)
        assert (pending.text, pending.author) == ("use httpx, not requests", "U5")
        assert [n.text for n in take_nudges(s, task_id)] == ["use httpx, not requests"]
    with transaction(engine) as s:
        assert nudges(s, task_id, pending_only=True) == []


@pytest.mark.parametrize("state", [State.NEEDS_INPUT, State.AWAITING_APPROVAL, State.FAILED])
def test_nudge_on_a_waiting_task_starts_a_revision_round(engine: Engine, state: State) -> None:
    task_id = new_task(engine, state)
    outcome = run(engine, actions.nudge, task_id, "also update the docs", actor="U5")
    assert outcome.task.state is State.QUEUED
    assert outcome.task.reason == "revision requested by U5"
    with transaction(engine) as s:
        assert [n.text for n in nudges(s, task_id, pending_only=True)] == ["also update the docs"]


def test_retry_requeues_a_failed_task_with_fresh_attempts(engine: Engine) -> None:
    task_id = new_task(engine, State.FAILED)
    outcome = run(engine, actions.retry, task_id)
    assert (outcome.task.state, outcome.task.attempts) == (State.QUEUED, 0)
    assert outcome.task.finished_at is None


def test_reject_closes_a_task_awaiting_approval(engine: Engine) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    outcome = run(engine, actions.reject, task_id, actor="U1")
    assert outcome.task.state is State.REJECTED and outcome.task.finished_at is not None


@pytest.mark.parametrize("prompt", ["", "   ", "\x00\x07", "\n\t"])
def test_empty_prompts_are_refused(engine: Engine, prompt: str) -> None:
    before = snapshot(engine)
    with pytest.raises(ActionError, match="the prompt is empty"), transaction(engine) as s:
        actions.add(s, repo="app", prompt=prompt, requester="U1")
    assert snapshot(engine) == before


def test_huge_prompts_are_refused_and_odd_text_is_kept(engine: Engine) -> None:
    too_long = pytest.raises(ActionError, match="20,001 characters; the limit is 20,000")
    with too_long, transaction(engine) as s:
        actions.add(s, repo="app", prompt="x" * 20_001, requester="U1")
    with transaction(engine) as s:  # the limit itself is allowed; from the terminal by default
        at_limit = actions.add(s, repo="app", prompt="y" * 20_000, requester="U1").task
        assert at_limit.source == "cli"
    odd = 'réparer le 🐛 in `src/*.py` — "quotes" & <tags>; DROP TABLE task;--'
    with transaction(engine) as s:
        task = actions.add(s, repo="app", prompt=odd, requester="U1").task
    with transaction(engine) as s:
        assert get_task(s, task.id).prompt == odd  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["7", "#7", " 7 "])
def test_task_ids_parse(text: str) -> None:
    assert actions.parse_task_id(text) == 7


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "7.5", "٣"])
def test_bad_task_ids_are_refused(text: str) -> None:
    with pytest.raises(ActionError, match="is not a task id"):
        actions.parse_task_id(text)


@pytest.mark.parametrize("action", [actions.approve, actions.reject, actions.cancel])
def test_only_the_requester_or_an_approver_decides(engine: Engine, action) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    before = snapshot(engine)
    with pytest.raises(ActionError, match="only the requester or an approver of task"):
        run(engine, action, task_id, actor="U7", approvers=["U8"])
    with pytest.raises(ActionError, match=r"only the requester of task \d+ may"):
        run(engine, action, task_id, actor="U7")
    assert snapshot(engine) == before
    assert run(engine, action, task_id, actor="U8", approvers=["U8"]).task.state is not None


@pytest.mark.parametrize("action", [actions.nudge, actions.reject])
def test_a_task_merged_locally_whose_push_failed_is_only_approved_again(
    engine: Engine, action
) -> None:
    """The merge landed on the base but parked before the push: a nudge would queue new work
    the next merge never lands, a reject would close a task whose work is in the base."""
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    with transaction(engine) as s:
        transition(s, task_id, State.MERGING)
        transition(s, task_id, State.AWAITING_APPROVAL, landing_commit="a" * 40)
    before = snapshot(engine)
    args = ("one more thing",) if action is actions.nudge else ()
    with pytest.raises(ActionError, match="merged into its base branch locally"):
        run(engine, action, task_id, *args)
    assert snapshot(engine) == before
    assert run(engine, actions.approve, task_id).task.state == State.MERGING


def last_state_event(engine: Engine, task_id: int) -> dict:
    with transaction(engine) as s:
        found = s.exec(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.kind == "state")
            .order_by(TaskEvent.id.desc())  # type: ignore[union-attr]
        ).first()
        assert found is not None
        return found.payload


@pytest.mark.parametrize(
    ("action", "verb"), [(actions.approve, "approve"), (actions.reject, "reject")]
)
def test_a_refusal_names_the_verb_and_the_requester(engine: Engine, action, verb: str) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    with pytest.raises(ActionError) as refused:
        run(engine, action, task_id, actor="U7")
    assert str(refused.value) == f"only the requester of task {task_id} may {verb} it " + (
        "(requested by U1)"
    )


def test_approve_resets_the_attempts_and_says_who_and_when(engine: Engine) -> None:
    task_id = new_task(engine, State.AWAITING_APPROVAL)
    with transaction(engine) as s:
        get_task(s, task_id).attempts = 2  # the run's crash retries, spent
    outcome = run(engine, actions.approve, task_id, actor="U1")
    assert outcome.message == f"approved task {task_id}; branch {outcome.task.branch} merges next"
    with transaction(engine) as s:  # a front end that knows the config names the base branch
        transition(s, task_id, State.AWAITING_APPROVAL)
    said = run(engine, actions.approve, task_id, actor="U1", base="main").message
    assert said.endswith(f"branch {outcome.task.branch} merges into main next")
    assert outcome.task.attempts == 0 and outcome.task.approved_at is not None
    assert last_state_event(engine, task_id) == {
        "from": "awaiting_approval",
        "to": "merging",
        "reason": "approved by U1",
        "by": "U1",
    }


def test_a_nudge_that_restarts_work_resets_the_attempts_and_is_signed(engine: Engine) -> None:
    running = new_task(engine, State.RUNNING)  # first: new_task claims the oldest queued
    task_id = new_task(engine, State.FAILED)
    with transaction(engine) as s:
        get_task(s, task_id).attempts = 3
    outcome = run(engine, actions.nudge, task_id, "try the other API", actor="U5")
    assert outcome.message == f"task {task_id} goes back to work with your note"
    assert (outcome.task.attempts, outcome.task.finished_at) == (0, None)
    assert last_state_event(engine, task_id)["by"] == "U5"
    with transaction(engine) as s:
        (nudge,) = nudges(s, task_id)
    assert (nudge.source, nudge.author) == ("cli", "U5")
    said = run(engine, actions.nudge, running, "and docs", actor="U5", source="slack")
    assert said.message == f"task {running} gets your note at its agent's next turn"
    with transaction(engine) as s:
        assert [n.source for n in nudges(s, running)] == ["slack"]
    with pytest.raises(ActionError, match=r"^the nudge is empty; say what the agent should do$"):
        run(engine, actions.nudge, running, " \x00 ", actor="U5")


def test_a_cancel_is_signed_by_who_asked(engine: Engine) -> None:
    task_id = new_task(engine)
    run(engine, actions.cancel, task_id, actor="U1")
    assert last_state_event(engine, task_id) == {
        "from": "queued",
        "to": "cancelled",
        "reason": "cancelled by U1",
        "by": "U1",
    }
