"""Prices, the spend ledger and daily budgets, tested directly: pure rules without I/O, and
the ledger and queue queries on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from bot import actions
from bot.slack import blocks
from bot.slack.commands import Command, parse
from executor.agents.llm_reply import Usage
from executor.config.schema import Budgets, Config, Price, RepoConfig
from executor.costs.budget import ALL, WAITING, Books, crossed, day_of, evaluate, held
from executor.costs.pricing import PRICES, cost_nanos, cost_text, price_of, price_table, usd
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task
from storage.queue import claim_next, show_waiting, waiting_by_repo
from storage.spend import Spent, charge, spent_by_repo
from storage.tasks import events, get_task, transition

BERLIN = ZoneInfo("Europe/Berlin")
NANOS = 1_000_000_000


# --- prices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "usage", "nanos", "shown"),
    [
        # $2 / $8 per million: 123,456 * 2 + 7,890 * 8 micro-dollars = $0.310032.
        ("gpt-4.1", Usage(123_456, 7_890), 310_032_000, "$0.31"),
        # $0.15 / $0.60: 1 token of each is 0.75 micro-dollars, exact in nano-dollars.
        ("gpt-4o-mini", Usage(1, 1), 750, "$0.00"),
        # A gateway's spelling is priced as the model it names.
        ("openai/gpt-4o", Usage(1_000_000, 100_000), 3_500_000_000, "$3.50"),
    ],
)
def test_costs_follow_the_price_table_exactly(
    model: str, usage: Usage, nanos: int, shown: str
) -> None:
    assert cost_nanos(price_of(model), usage) == nanos
    assert usd(nanos) == shown


def test_a_thousand_small_calls_add_up_to_the_cent() -> None:
    """Floats drift (0.1 + 0.2 != 0.3); nano-dollar sums do not."""
    per_call = cost_nanos(price_of("gpt-4o-mini"), Usage(1_000, 500))  # $0.00045
    assert per_call == 450_000
    assert usd(sum([per_call] * 1_000)) == "$0.45"
    assert usd(5_000_000) == "$0.01"  # half a cent rounds up, like an invoice
    assert usd(4_999_999) == "$0.00"


def test_configured_prices_add_models_and_override_the_table() -> None:
    mine = Price(prompt=Decimal("1.25"), completion=Decimal("10"))
    table = price_table({"local-llama": mine, "gpt-4.1": mine})
    assert price_of("local-llama", table) == mine
    assert price_of("gpt-4.1", table) == mine
    assert price_of("gpt-4o", table) == PRICES["gpt-4o"]
    assert price_of("mystery-model", table) is None
    assert cost_nanos(None, Usage(10, 10)) is None


def test_unknown_costs_are_said_not_guessed() -> None:
    assert cost_text(0, 0) == "$0.00"
    assert cost_text(0, 1_500) == "cost unknown for 1,500 tokens"
    assert cost_text(420_000_000, 15) == "$0.42 + cost unknown for 15 tokens"
    assert cost_text(123_456_789, 0, places=4) == "$0.1235"


# --- days and budgets --------------------------------------------------------------------


def test_a_day_is_a_calendar_day_in_the_configured_timezone() -> None:
    # 23:30 UTC on 1 June is already 2 June in Berlin (UTC+2 in summer).
    day = day_of(datetime(2026, 6, 1, 23, 30, tzinfo=UTC), BERLIN)
    assert day.start == datetime(2026, 6, 1, 22, 0, tzinfo=UTC)
    assert day.end == datetime(2026, 6, 2, 22, 0, tzinfo=UTC)
    assert day.label == "2026-06-02 (Europe/Berlin)"
    assert day.resets_in(datetime(2026, 6, 2, 20, 15, tzinfo=UTC)) == "1h45m"
    # The day the clocks go back has 25 hours.
    autumn = day_of(datetime(2026, 10, 25, 12, 0, tzinfo=UTC), BERLIN)
    assert autumn.end - autumn.start == timedelta(hours=25)


def _budgets(daily: str | None = None, **repos: str) -> Budgets:
    return Budgets(
        daily_usd=None if daily is None else Decimal(daily),
        repo_daily_usd={r: Decimal(v) for r, v in repos.items()},
    )


def test_a_reached_budget_holds_its_repo_and_all_repos_budget_holds_every_repo() -> None:
    day = day_of(datetime(2026, 6, 1, 12, tzinfo=UTC), BERLIN)
    spent = {"api": Spent(5 * NANOS), "web": Spent(NANOS, unpriced_tokens=99_000)}
    budgets = evaluate(_budgets("10", api="5"), spent, ["api", "web", "docs"])
    assert [(b.scope, b.limit_nanos, b.spent) for b in budgets] == [
        (ALL, 10 * NANOS, Spent(6 * NANOS, 99_000)),
        ("api", 5 * NANOS, Spent(5 * NANOS)),  # exactly at the limit: reached
        ("web", None, Spent(NANOS, 99_000)),
        ("docs", None, Spent()),
    ]
    waiting = held(budgets, day)
    assert list(waiting) == ["api"]
    assert waiting["api"] == (
        f"{WAITING}the daily budget for repo api ($5.00) is spent; "
        "starts after midnight Europe/Berlin, or when the budget is raised"
    )
    assert (
        crossed(budgets, "api") == "daily budget reached for repo api: $5.00 of $5.00 spent today"
    )
    assert crossed(budgets, "web") is None

    over = evaluate(_budgets("6", api="50"), spent, ["api", "web", "docs"])
    assert set(held(over, day)) == {"api", "web", "docs"}
    assert crossed(over, "docs") == "daily budget reached for all repos: $6.00 of $6.00 spent today"


def test_unpriced_tokens_do_not_count_against_a_budget() -> None:
    budgets = evaluate(_budgets("1"), {"api": Spent(0, unpriced_tokens=10**9)}, ["api"])
    assert not budgets[0].reached and held(budgets, day_of(datetime.now(UTC), BERLIN)) == {}


def test_no_budgets_hold_nothing() -> None:
    budgets = evaluate(Budgets(), {"api": Spent(10**15)}, ["api"])
    assert not Budgets().any and not any(b.reached for b in budgets)


def test_slash_budget_parses_and_renders() -> None:
    assert parse("budget") == Command("budget")
    day = day_of(datetime(2026, 6, 1, 12, tzinfo=UTC), ZoneInfo("UTC"))
    budgets = evaluate(
        _budgets("10", api="5"), {"api": Spent(5 * NANOS), "web": Spent(0, 1234)}, ["api", "web"]
    )
    text = blocks.budget_text(day, budgets, {"api": 2}, now=datetime(2026, 6, 1, 12, tzinfo=UTC))
    assert text.splitlines() == [
        "*Spend today*, 2026-06-01 (UTC); resets in 12h00m",
        "• all repos: $5.00 of $10.00 ($5.00 left) + 1,234 tokens at unknown cost; 2 tasks waiting",
        "• repo api: $5.00 of $5.00 — *reached*; 2 tasks waiting",
        "• repo web: $0.00 + 1,234 tokens at unknown cost",
    ]


# --- the ledger and the queue (SQLite and PostgreSQL) ------------------------------------


def _add(engine: Engine, repo: str = "api", prompt: str = "fix it") -> int:
    with transaction(engine) as s:
        task = actions.add(s, repo=repo, prompt=prompt, requester="U1", channel="C1").task
        assert task.id is not None
        return task.id


def test_charges_add_up_per_task_and_per_day(engine: Engine) -> None:
    first, second = _add(engine), _add(engine, "web")
    late = datetime(2026, 6, 1, 21, 59, tzinfo=UTC)  # 23:59 in Berlin
    with transaction(engine) as s:
        charge(s, first, model="m", tokens_in=10, tokens_out=5, cost_nanos=250_000_000, at=late)
        charge(s, first, model="m", tokens_in=1, tokens_out=1, cost_nanos=1, at=late)
        # After midnight in Berlin: the next day's spend.
        after = late + timedelta(minutes=2)
        charge(s, first, model="m", tokens_in=10, tokens_out=5, cost_nanos=NANOS, at=after)
        charge(s, second, model="x", tokens_in=700, tokens_out=300, cost_nanos=None, at=after)
    with transaction(engine) as s:
        task = get_task(s, first)
        assert (task.tokens_in, task.tokens_out, task.unpriced_tokens) == (21, 11, 0)
        assert task.cost_nanos == 1_250_000_001 and task.cost_usd == pytest.approx(1.25)
        assert get_task(s, second).unpriced_tokens == 1_000
        day1, day2 = day_of(late, BERLIN), day_of(after, BERLIN)
        assert spent_by_repo(s, day1.start, day1.end) == {"api": Spent(250_000_001)}
        assert spent_by_repo(s, day2.start, day2.end) == {
            "api": Spent(NANOS),
            "web": Spent(0, 1_000),
        }


def test_waiting_tasks_say_why_once_and_their_merges_still_pass(engine: Engine) -> None:
    held_task, other, merge = _add(engine), _add(engine, "web"), _add(engine, "api", "merge me")
    with transaction(engine) as s:  # an approved merge of the held repo, waiting for a worker
        s.get(Task, merge).state = State.MERGING  # type: ignore[union-attr]
    reason = f"{WAITING}the daily budget for repo api ($5.00) is spent"
    with transaction(engine) as s:
        assert show_waiting(s, {"api": reason}, marker=WAITING) == 1
        assert show_waiting(s, {"api": reason}, marker=WAITING) == 0  # said once
        assert waiting_by_repo(s, marker=WAITING) == {"api": 1}
        assert claim_next(s, "w1", hold_repos=["api"]).id == merge  # type: ignore[union-attr]
        assert claim_next(s, "w1", hold_repos=["api"]).id == other  # type: ignore[union-attr]
        assert claim_next(s, "w1", hold_repos=["api"]) is None
    with transaction(engine) as s:
        task = get_task(s, held_task)
        assert (task.state, task.reason) == (State.QUEUED, reason)
        assert [e.payload for e in events(s, held_task) if e.kind == "waiting"] == [
            {"reason": reason}
        ]
        # The next day nothing is held: the reason goes, and the task is claimed.
        assert show_waiting(s, {}, marker=WAITING) == 1
        assert get_task(s, held_task).reason is None
        assert claim_next(s, "w1").id == held_task  # type: ignore[union-attr]


def test_other_reasons_on_queued_tasks_are_left_alone(engine: Engine) -> None:
    task_id = _add(engine)
    with transaction(engine) as s:
        claim_next(s, "w1")
        transition(s, task_id, State.QUEUED, reason="re-queued: executor shut down")
        show_waiting(s, {}, marker=WAITING)
        assert get_task(s, task_id).reason == "re-queued: executor shut down"


def test_books_read_prices_budgets_and_the_digest_timezone(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "repos": {"api": RepoConfig(path=tmp_path)},
            "digest": {"timezone": "Europe/Berlin"},
            "budgets": {"daily_usd": 20},
            "prices": {"local": {"prompt": 0, "completion": 0.5}},
        }
    )
    books = Books.of(config)
    assert books.tz == BERLIN and books.repos == ("api",) and books.budgets.any
    assert cost_nanos(price_of("local", books.prices), Usage(100, 1000)) == 500_000
