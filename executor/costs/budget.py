"""Daily budgets: which repos' queued tasks must wait, and whether a running task has
crossed a budget. Pure functions over what was spent today; `today()` is the one read.

The rules:
- A "day" is a calendar day in `digest.timezone` (the digest's day; UTC by default).
- A budget is a stop line, not a reservation: a queued task starts while today's spend is
  below every budget that covers it (all repos, its repo), and waits once it is reached.
  A task's own `max_cost_usd` is not reserved up front: that would hold back most of a day's
  budget for tasks that rarely use their whole limit.
- A running task checks before each model call; once a budget is reached it parks in
  `needs_input` with the reason. The overshoot is at most one model call per running task.
- Only known costs count. Tokens of models without a price are shown beside the budget
  ("+ N tokens at unknown cost") but cannot hold a task back: nightcrew does not guess."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import Session

from executor.config.schema import Budgets, Config, Price
from executor.costs.pricing import price_table, to_nanos, usd
from storage.models import utcnow
from storage.spend import Spent, spent_by_repo

# Queued tasks held by a budget carry a reason starting with this, so it can be cleared
# once the budget allows them again (and told apart from other reasons).
WAITING = "waiting for budget: "
ALL = None  # the scope of the budget for all repos together


@dataclass(frozen=True)
class Day:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    tz: ZoneInfo

    @property
    def label(self) -> str:
        return f"{self.start.astimezone(self.tz):%Y-%m-%d} ({self.tz.key})"

    def resets_in(self, now: datetime) -> str:
        minutes = max(0, int((self.end - now).total_seconds()) // 60)
        return f"{minutes // 60}h{minutes % 60:02d}m"


def day_of(now: datetime, tz: ZoneInfo) -> Day:
    """The calendar day in `tz` that `now` falls in; a 23- or 25-hour day around a DST
    change is still one day."""
    local = now.astimezone(tz).date()
    start = datetime.combine(local, time(), tz).astimezone(UTC)
    end = datetime.combine(local + timedelta(days=1), time(), tz).astimezone(UTC)
    return Day(start, end, tz)


@dataclass(frozen=True)
class Budget:
    """One budget and today's spend against it (a scope without a limit is shown too)."""

    scope: str | None  # a repo, or ALL
    limit_nanos: int | None
    spent: Spent

    @property
    def name(self) -> str:
        return "all repos" if self.scope is ALL else f"repo {self.scope}"

    @property
    def reached(self) -> bool:
        return self.limit_nanos is not None and self.spent.cost_nanos >= self.limit_nanos

    @property
    def left_nanos(self) -> int | None:
        return (
            None if self.limit_nanos is None else max(0, self.limit_nanos - self.spent.cost_nanos)
        )

    def crossed_reason(self) -> str:
        assert self.limit_nanos is not None
        return (
            f"daily budget reached for {self.name}: {usd(self.spent.cost_nanos)} of "
            f"{usd(self.limit_nanos)} spent today"
        )

    def waiting_reason(self, day: Day) -> str:
        assert self.limit_nanos is not None
        return (
            f"{WAITING}the daily budget for {self.name} ({usd(self.limit_nanos)}) is spent; "
            f"starts after midnight {day.tz.key}, or when the budget is raised"
        )


def evaluate(budgets: Budgets, spent: dict[str, Spent], repos: Iterable[str]) -> list[Budget]:
    """All repos first, then each repo (configured ones, then any other that spent today)."""
    names = list(dict.fromkeys([*repos, *spent]))
    total = sum(spent.values(), Spent())
    limit = to_nanos(budgets.daily_usd) if budgets.daily_usd is not None else None
    out = [Budget(ALL, limit, total)]
    for repo in names:
        cap = budgets.repo_daily_usd.get(repo)
        out.append(Budget(repo, None if cap is None else to_nanos(cap), spent.get(repo, Spent())))
    return out


def held(budgets: list[Budget], day: Day) -> dict[str, str]:
    """Repo -> why its queued tasks wait. All repos' budget reached holds every repo."""
    overall = next(b for b in budgets if b.scope is ALL)
    repos = [b for b in budgets if b.scope is not ALL]
    if overall.reached:
        return {b.scope: overall.waiting_reason(day) for b in repos if b.scope is not None}
    return {b.scope: b.waiting_reason(day) for b in repos if b.reached and b.scope is not None}


def crossed(budgets: list[Budget], repo: str) -> str | None:
    """Why a running task of `repo` must stop now, or None."""
    for budget in budgets:
        if budget.scope in (ALL, repo) and budget.reached:
            return budget.crossed_reason()
    return None


@dataclass(frozen=True)
class Books:
    """What charging and budget checks need: prices, budgets, the day's time zone, a clock
    (injected in tests so "tomorrow" is one assignment away)."""

    prices: dict[str, Price]
    budgets: Budgets
    tz: ZoneInfo
    repos: tuple[str, ...]
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    def of(cls, config: Config, clock: Callable[[], datetime] = utcnow) -> Books:
        return cls(
            prices=price_table(config.prices),
            budgets=config.budgets,
            tz=ZoneInfo(config.digest.timezone),
            repos=tuple(config.repos),
            clock=clock,
        )

    def today(self, session: Session) -> tuple[Day, list[Budget]]:
        """Today's budgets with what was spent so far (one grouped query on the ledger)."""
        day = day_of(self.clock(), self.tz)
        spent = spent_by_repo(session, day.start, day.end)
        return day, evaluate(self.budgets, spent, self.repos)
