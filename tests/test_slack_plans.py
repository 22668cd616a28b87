"""Plans and dependencies in Slack, against the emulator: `/agent plan` posts a plan card
that an executor's answer fills in, Queue all (only for the requester or an approver, once),
progress on the card, a reply re-plans, `--after`, and Run anyway on a parked dependent; a
plan card Slack will no longer edit is posted afresh and kept up to date there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_bolt import App
from sqlalchemy import Engine, func
from sqlmodel import select

from bot.slack import blocks
from bot.slack.app import SlackEnv, build_app
from bot.slack.notifier import Notifier
from bot.slack.plan_blocks import DISCARD, EDIT, PLAN_BLOCK, PLAN_INPUT, QUEUE_ALL
from bot.slack.run import http_mode
from executor.config.schema import Config, RepoConfig
from storage import outbox
from storage.db import transaction
from storage.dependencies import settle
from storage.lifecycle import State
from storage.models import Plan, Task
from storage.plan_draft import PlanDraft
from storage.plans import claim_planning, finish_planning, get_plan
from storage.queue import claim_next
from storage.tasks import transition
from tests.claiming import claim
from tests.slack_emulator import (
    Message,
    SlackEmulator,
    block_action,
    slash_command,
    view_submission,
)
from tests.slack_fixtures import card_of
from tests.test_planner import FOUR

REQUESTER, STRANGER, APPROVER = "U111", "U222", "U999"


@pytest.fixture
def url(engine: Engine, env: SlackEnv, tmp_path: Path) -> Iterator[str]:
    config = Config(
        repos={"api": RepoConfig(path=tmp_path, approvers=[APPROVER])}, channels={"C111": "api"}
    )
    app: App = build_app(engine, lambda: config, env)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        yield url


def plan_card(slack: SlackEmulator, engine: Engine, contains: str) -> Message:
    def posted() -> Message | None:
        with transaction(engine) as s:
            plan = s.exec(select(Plan)).first()
        if plan is None or plan.thread_ts is None:
            return None
        card = slack.message("C111", plan.card_ts or plan.thread_ts)  # a fresh one, if posted
        return card if contains in card.all_text else None

    return slack.wait_until(posted, what=f"the plan card with {contains!r}")


def plan_by_executor(engine: Engine, draft: dict | None) -> None:
    """What an executor does with a requested plan (its planner run is tests/test_planner)."""
    with transaction(engine) as s:
        plan = claim_planning(s, "ex/0", stale_s=600)
        assert plan is not None and plan.id is not None
        made = PlanDraft.model_validate(draft) if draft else None
        finish_planning(s, plan.id, "ex/0", draft=made, error=None if made else "garbage")


def count(engine: Engine) -> int:
    with transaction(engine) as s:
        return s.exec(select(func.count()).select_from(Task)).one()


def test_plan_card_queue_all_once_for_the_requester_and_progress_on_the_card(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    answer = slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    assert "planning plan 1 on api" in answer.text
    plan_card(slack, engine, "Planning: add subtraction")
    plan_by_executor(engine, FOUR)
    card = plan_card(slack, engine, "add sub() to calc.py")
    assert "(after 1)" in card.all_text and card.action_ids == [QUEUE_ALL, EDIT, DISCARD]
    message = card.to_api()
    slack.post_to_app(url, block_action(QUEUE_ALL, user=STRANGER, message=message))
    refusal = slack.wait_until(slack.responses, what="the refusal")[-1]
    assert "only the requester or an approver of plan 1" in refusal.all_text
    assert count(engine) == 0
    slack.post_to_app(url, block_action(QUEUE_ALL, user=REQUESTER, message=message))
    slack.post_to_app(url, block_action(QUEUE_ALL, user=APPROVER, message=message))  # 2nd tap
    slack.wait_until(lambda: len(slack.responses()) == 3, what="both answers")
    texts = [r.all_text for r in slack.responses()[1:]]
    assert any("queued plan 1: tasks #1, #2, #3, #4" in t for t in texts)
    assert any("plan 1 is queued, not proposed" in t for t in texts)
    assert count(engine) == 4
    progress = plan_card(slack, engine, "#3")
    assert "waiting" in progress.all_text and progress.action_ids == []
    # A task's move shows on the plan card, with a link to its thread.
    assert claim(engine).id == 1
    plan_card(slack, engine, "preparing")  # a claim refreshes the plan card too
    with transaction(engine) as s:
        transition(s, 1, State.RUNNING)
        transition(s, 1, State.AWAITING_APPROVAL)
    card_of(slack, engine, 1)
    plan_card(slack, engine, "awaiting approval")
    plan_card(slack, engine, "https://slack.com/archives/C111/p")


def test_a_reply_on_the_plan_card_plans_again_with_that_note(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    plan_by_executor(engine, None)
    card = plan_card(slack, engine, "garbage")
    (event,) = slack.post_as_user("C111", STRANGER, "make it smaller", thread_ts=card.ts)
    slack.post_to_app(url, event)
    (event,) = slack.post_as_user("C111", REQUESTER, "make it smaller", thread_ts=card.ts)
    slack.post_to_app(url, event)
    with transaction(engine) as s:
        slack.wait_until(lambda: get_plan(s, 1).status == "requested", what="the re-plan")
        assert get_plan(s, 1).feedback == f"{REQUESTER}: make it smaller"
    plan_card(slack, engine, "Planning")


def _plan(engine: Engine) -> Plan:
    with transaction(engine) as s:
        return get_plan(s, 1)


def _settled(engine: Engine) -> bool:
    with transaction(engine) as s:
        return not outbox.pending(s)


def test_a_plan_card_slack_will_not_edit_is_posted_again_in_its_thread_and_kept_up_to_date(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    plan_by_executor(engine, FOUR)
    old = plan_card(slack, engine, "add sub() to calc.py")
    slack.post_to_app(url, block_action(QUEUE_ALL, user=REQUESTER, message=old.to_api()))
    plan_card(slack, engine, "#3")
    slack.wait_until(lambda: _settled(engine), what="the outbox to drain")
    slack.refuse_update("C111", old.ts, "cant_update_message")
    edited = slack.message("C111", old.ts).edits
    claim(engine)  # progress: the plan card is edited
    fresh = plan_card(slack, engine, "preparing")
    assert fresh.ts == _plan(engine).card_ts and fresh.ts != old.ts
    assert fresh.thread_ts == old.ts and _plan(engine).thread_ts == old.ts  # same thread
    slack.wait_until(lambda: _settled(engine), what="the note")
    replies = [m for m in slack.thread("C111", old.ts) if m.ts != old.ts and m.ts != fresh.ts]
    (note,) = [m for m in replies if m.user == slack.bot_user_id]
    assert "Plan 1's card could no longer be edited" in note.text
    assert "cant_update_message" in note.text and "fresh one above" in note.text
    # Later progress edits the fresh card; nothing more is posted, the old one left alone.
    with transaction(engine) as s:
        transition(s, 1, State.RUNNING)
        transition(s, 1, State.AWAITING_APPROVAL)
    card = plan_card(slack, engine, "awaiting approval")
    assert card.ts == fresh.ts and card.edits > fresh.edits
    slack.wait_until(lambda: _settled(engine), what="the outbox to drain")
    assert slack.message("C111", old.ts).edits == edited
    assert len([m for m in slack.thread("C111", old.ts) if m.user == slack.bot_user_id]) == 3


def test_a_deleted_plan_card_is_posted_as_a_new_thread_where_a_reply_plans_again(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    old = plan_card(slack, engine, "Planning")
    slack.wait_until(lambda: _settled(engine), what="the outbox to drain")
    slack.refuse_update("C111", old.ts, "message_not_found")
    plan_by_executor(engine, FOUR)  # the proposal: an edit of the card
    card = plan_card(slack, engine, "add sub() to calc.py")
    plan = _plan(engine)
    assert card.ts == plan.thread_ts != old.ts and plan.card_ts is None
    assert card.thread_ts is None and card.action_ids == [QUEUE_ALL, EDIT, DISCARD]
    slack.wait_until(lambda: _settled(engine), what="the note")
    (note,) = [m for m in slack.thread("C111", card.ts) if m.ts != card.ts]
    assert "message_not_found" in note.text and "reply here to plan again" in note.text
    (event,) = slack.post_as_user("C111", REQUESTER, "make it smaller", thread_ts=card.ts)
    slack.post_to_app(url, event)
    slack.wait_until(lambda: _plan(engine).status == "requested", what="the re-plan")
    assert _plan(engine).feedback == f"{REQUESTER}: make it smaller"
    plan_card(slack, engine, "Planning")


def test_add_after_and_run_anyway_when_the_prerequisite_fails(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("add first", user_id=REQUESTER))
    answer = slack.post_to_app(url, slash_command("add --after 1 second", user_id=REQUESTER))
    assert "task 2 on api waits for #1 to merge" in answer.text
    bad = slack.post_to_app(url, slash_command("add --after 1,7 third", user_id=REQUESTER))
    assert "there is no task 7" in bad.text and count(engine) == 2
    slack.wait_until(lambda: "waiting" in card_of(slack, engine, 2).all_text, what="waiting")
    assert claim(engine).id == 1
    with transaction(engine) as s:
        transition(s, 1, State.FAILED, reason="boom")
    with transaction(engine) as s:  # the next claim settles the dependents
        assert claim_next(s, "w1") is None
    with transaction(engine) as s:
        settle(s)
    slack.wait_until(
        lambda: blocks.RUN_ANYWAY in card_of(slack, engine, 2).action_ids, what="Run anyway"
    )
    card = card_of(slack, engine, 2)
    assert "prerequisite #1 failed" in card.all_text
    message = card.to_api()
    slack.post_to_app(url, block_action(blocks.RUN_ANYWAY, user=STRANGER, message=message))
    slack.post_to_app(url, block_action(blocks.RUN_ANYWAY, user=REQUESTER, message=message))
    slack.wait_until(lambda: len(slack.responses()) == 2, what="both answers")
    texts = [r.all_text for r in slack.responses()]  # each tap answers on its own thread
    assert any("only the requester" in t for t in texts)
    assert any("task 2 runs on the current base without its prerequisites" in t for t in texts)

    assert claim(engine).id == 2  # runs on the base as it is


def test_edit_changes_drops_and_adds_tasks_and_refuses_garbage_in_the_modal(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    plan_by_executor(engine, FOUR)
    message = plan_card(slack, engine, "add sub() to calc.py").to_api()
    slack.post_to_app(url, block_action(EDIT, user=STRANGER, message=message))
    refusal = slack.wait_until(slack.responses, what="the refusal")[-1]
    assert "only the requester or an approver of plan 1 may edit" in refusal.all_text
    assert slack.opened_views() == []
    slack.post_to_app(url, block_action(EDIT, user=REQUESTER, message=message))
    (view,) = slack.wait_until(slack.opened_views, what="the modal")
    shown = view["blocks"][0]["element"]["initial_value"]
    assert "title: add subtraction" in shown and "after:\n  - 1" in shown

    def submit(text: str) -> str:
        values = {PLAN_BLOCK: {PLAN_INPUT: text}}
        answer = slack.post_to_app(url, view_submission(values=values, user=REQUESTER, view=view))
        return answer.text

    circle = "title: t\ntasks:\n- {prompt: a, allowed_paths: [a], after: [2]}\n" + (
        "- {prompt: b, allowed_paths: [b], after: [1]}\n"
    )
    assert "circle: 1 -> 2 -> 1" in submit(circle)
    assert "not YAML at line" in submit("title: [unclosed\ntasks: {")
    assert "Extra inputs" in submit("title: t\ntasks:\n- {prompt: a, allowed_paths: [a], rm: x}")
    with transaction(engine) as s:
        assert len(get_plan(s, 1).proposal) == 4  # refused edits wrote nothing
    edited = "title: smaller\ntasks:\n- {prompt: only sub(), allowed_paths: [calc.py], size: S}\n"
    assert submit(edited) == ""
    card = plan_card(slack, engine, "only sub()")
    assert "smaller" in card.all_text and "add sub() to calc.py" not in card.all_text


def test_a_spent_budget_refuses_agent_plan_with_the_reason(
    slack: SlackEmulator, engine: Engine, env: SlackEnv, tmp_path: Path
) -> None:
    """Planning costs model calls: once today's budget is spent, `/agent plan` says so and
    asks no executor to plan (no plan row, no card)."""
    from datetime import UTC, datetime

    from executor.config.schema import Budgets
    from storage.spend import charge_planner

    config = Config(
        repos={"api": RepoConfig(path=tmp_path)},
        channels={"C111": "api"},
        budgets=Budgets(daily_usd=5),
    )
    with transaction(engine) as s:  # an earlier planner run spent $6 today
        charge_planner(
            s,
            repo="api",
            plan_id=None,
            model="m",
            tokens_in=1,
            tokens_out=1,
            cost_nanos=6_000_000_000,
            at=datetime.now(UTC),
        )
    app: App = build_app(engine, lambda: config, env)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        answer = slack.post_to_app(url, slash_command("plan add subtraction", user_id=REQUESTER))
    assert "no new plan: daily budget reached for all repos: $6.00 of $5.00" in answer.text
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(Plan)).one() == 0


def test_the_all_merged_card_counts_planning_in_the_plans_cost_and_opens_its_page() -> None:
    from datetime import UTC, datetime, timedelta

    from bot.slack.plan_blocks import plan_card
    from storage.spend import Spent

    start = datetime(2026, 12, 5, 10, tzinfo=UTC)
    plan = Plan(id=3, repo="api", spec="s", title="t", status="queued", requester=REQUESTER)
    tasks = [
        Task(
            id=n,
            repo="api",
            prompt=f"task {n}",
            requester=REQUESTER,
            state=State.MERGED,
            cost_nanos=1_000_000_000,
            created_at=start,
            finished_at=start + timedelta(minutes=42),
        )
        for n in (7, 8)
    ]
    page = "https://pages.example.test/p/3?u=channel%3AC111&e=1&s=" + "a" * 64
    _, card = plan_card(plan, tasks, page=page, planning=Spent(500_000_000, 0))
    text = str(card)
    assert "All merged · $2.50 (planning included) · 42 min" in text
    (opener,) = [e for b in card if b["type"] == "actions" for e in b["elements"]]
    assert opener["url"] == page and opener["text"]["text"] == "Open"
