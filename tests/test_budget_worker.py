"""Costs and daily budgets through a real worker: real Docker sandbox, real git, a scripted
model over real HTTP, a frozen clock for "tomorrow"; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import col, select

from bot.slack import blocks
from executor.config.schema import ConfigWatch
from executor.costs.budget import WAITING
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Charge, Outbox
from storage.tasks import events
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, add_task, task


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def bash(n: int, usage: tuple[int, int]) -> object:
    return reply(tool_call("bash", {"command": f"echo {n}"}), usage=usage)


def finish(usage: tuple[int, int]) -> object:
    return reply(tool_call("finish", {"summary": "done"}), usage=usage)


def charges(engine: Engine, task_id: int) -> list[int | None]:
    with transaction(engine) as s:
        rows = s.exec(
            select(Charge).where(Charge.task_id == task_id).order_by(col(Charge.id))
        ).all()
        return [c.cost_nanos for c in rows]


@pytest.mark.parametrize(
    ("budgets", "name"),
    [({"daily_usd": 0.5}, "all repos"), ({"repo_daily_usd": {"app": "0.50"}}, "repo app")],
    ids=["global", "per-repo"],
)
def test_a_task_crossing_the_budget_parks_and_the_next_waits_until_tomorrow(
    engine: Engine, make_worker: RunWorker, budgets: dict, name: str
) -> None:
    first, second = add_task(engine, "first task"), add_task(engine, "second task")
    # 23:00 in Berlin: "tomorrow" is two hours of UTC away.
    clock = Clock(datetime(2026, 6, 1, 21, 0, tzinfo=UTC))
    # gpt-4.1 costs $2 / $8 per million tokens: 50k in + 25k out = $0.30 a turn.
    turn = (50_000, 25_000)
    script = [bash(1, turn), bash(2, turn), finish(turn)]
    options = {"budgets": budgets, "digest": {"timezone": "Europe/Berlin"}}
    with ScriptedLLM(script) as llm:
        worker = make_worker(llm, model="gpt-4.1", config_options=options, clock=clock)
        assert worker.work(drain=True) == 1  # the second task was held, so the drain ends
        assert llm.remaining == 1

        parked = task(engine, first)
        assert parked.state is State.NEEDS_INPUT
        assert parked.reason == f"daily budget reached for {name}: $0.60 of $0.50 spent today"
        assert (parked.cost_nanos, parked.tokens_in, parked.tokens_out) == (
            600_000_000,
            100_000,
            50_000,
        )
        assert charges(engine, first) == [300_000_000, 300_000_000]

        waiting = task(engine, second)
        assert waiting.state is State.QUEUED and waiting.attempts == 0
        assert waiting.reason == (
            f"{WAITING}the daily budget for {name} ($0.50) is spent; "
            "starts after midnight Europe/Berlin, or when the budget is raised"
        )
        _, card = blocks.card(waiting)
        assert "*Waiting for budget:* the daily budget for" in str(card)
        with transaction(engine) as s:  # the card in Slack is refreshed to say so
            assert s.exec(
                select(Outbox).where(Outbox.task_id == second, Outbox.kind == "card")
            ).all()

        # Still today (23:59 Berlin): polling again neither starts it nor repeats the event.
        clock.now += timedelta(minutes=59)
        assert worker.work(drain=True) == 0
        # Midnight in Berlin: a new day, a new budget.
        clock.now += timedelta(minutes=2)
        assert worker.work(drain=True) == 1
    started = task(engine, second)
    assert started.state is State.AWAITING_APPROVAL, started.reason
    assert started.cost_nanos == 300_000_000
    with transaction(engine) as s:
        kinds = [e.kind for e in events(s, second)]
    assert kinds.count("waiting") == 1
    assert kinds.index("waiting") < kinds.index("state")  # it waited, then it started


def test_costs_match_the_configured_price_table_to_the_cent(
    engine: Engine, make_worker: RunWorker
) -> None:
    task_id = add_task(engine)
    # $1.25 / $10 per million: 123,456 in + 7,890 out = $0.15432 + $0.0789 = $0.23322 a turn.
    turn = (123_456, 7_890)
    options = {"prices": {"scripted-model": {"prompt": 1.25, "completion": 10}}}
    with ScriptedLLM([bash(1, turn), bash(2, turn), finish(turn)]) as llm:
        make_worker(llm, config_options=options).work(drain=True)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    assert charges(engine, task_id) == [233_220_000] * 3
    assert (done.cost_nanos, done.unpriced_tokens) == (699_660_000, 0)  # $0.69966
    assert "$0.70" in str(blocks.card(done)[1])


def test_a_model_without_a_price_counts_tokens_says_cost_unknown_and_spends_no_budget(
    engine: Engine, make_worker: RunWorker
) -> None:
    first, second = add_task(engine, "first task"), add_task(engine, "second task")
    options = {"budgets": {"daily_usd": 0.01}}
    script = [bash(1, (40_000, 2_000)), finish((1_000, 100)), finish((10, 5))]
    with ScriptedLLM(script) as llm:
        assert make_worker(llm, config_options=options).work(drain=True) == 2
    one, two = task(engine, first), task(engine, second)
    assert (one.state, two.state) == (State.AWAITING_APPROVAL, State.AWAITING_APPROVAL)
    assert (one.tokens_in, one.tokens_out, one.unpriced_tokens) == (41_000, 2_100, 43_100)
    assert one.cost_nanos == 0
    assert "cost unknown for 43,100 tokens" in str(blocks.card(one)[1])
    assert charges(engine, first) == [None, None]


def test_raising_the_budget_in_nightcrew_yaml_starts_the_waiting_task_without_a_restart(
    engine: Engine, make_worker: RunWorker, tmp_path: Path
) -> None:
    first, second = add_task(engine, "first task"), add_task(engine, "second task")
    turn = (50_000, 25_000)  # $0.30 a turn with gpt-4.1
    options = {"budgets": {"daily_usd": 0.5}}
    noon = Clock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))  # no midnight mid-test
    with ScriptedLLM([bash(1, turn), bash(2, turn), finish(turn)]) as llm:
        worker = make_worker(llm, model="gpt-4.1", config_options=options, clock=noon)
        path = tmp_path / "nightcrew.yaml"
        path.write_text(yaml.safe_dump(worker.config.model_dump(mode="json")))
        worker.reload = ConfigWatch(path, worker.config)
        assert worker.work(drain=True) == 1
        assert task(engine, first).state is State.NEEDS_INPUT
        assert (task(engine, second).reason or "").startswith(WAITING)

        path.write_text("budgets: {daily_usd: oops}\n")  # a typo keeps the config that works
        assert worker.work(drain=True) == 0
        raised = worker.config.model_dump(mode="json") | {"budgets": {"daily_usd": "5"}}
        path.write_text(yaml.safe_dump(raised))
        assert worker.work(drain=True) == 1  # the same day: the raised budget lets it start
    started = task(engine, second)
    assert started.state is State.AWAITING_APPROVAL, started.reason
    assert started.reason is None or not started.reason.startswith(WAITING)
