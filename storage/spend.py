"""The spend ledger: charge a task for a model call (its counters and a `Charge` row, in the
caller's transaction), charge a planner run (a row naming its plan, if it made one), and
sum what was spent in a window, per repo, or on a plan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from storage.models import Charge, Task
from storage.tasks import get_task


@dataclass(frozen=True)
class Spent:
    cost_nanos: int = 0
    unpriced_tokens: int = 0  # tokens of models without a price: their cost is unknown

    def __add__(self, other: Spent) -> Spent:
        return Spent(
            self.cost_nanos + other.cost_nanos, self.unpriced_tokens + other.unpriced_tokens
        )


def charge(
    session: Session,
    task_id: int,
    *,
    model: str,
    tokens_in: int,
    tokens_out: int,
    cost_nanos: int | None,
    at: datetime,
) -> Task:
    """Add one model call to the task's totals and the ledger; returns the task as now."""
    task = get_task(session, task_id)
    task.tokens_in += tokens_in
    task.tokens_out += tokens_out
    if cost_nanos is None:
        task.unpriced_tokens += tokens_in + tokens_out
    else:
        task.cost_nanos += cost_nanos
        task.cost_usd = task.cost_nanos / 1_000_000_000
    session.add(task)
    if tokens_in or tokens_out:
        session.add(
            Charge(
                task_id=task_id,
                repo=task.repo,
                model=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost_nanos=cost_nanos,
                at=at,
            )
        )
    return task


def charge_planner(
    session: Session,
    *,
    repo: str,
    plan_id: int | None,
    model: str,
    tokens_in: int,
    tokens_out: int,
    cost_nanos: int | None,
    at: datetime,
) -> None:
    """Add a planner run's model calls to the ledger: the day's budgets and the digest count
    them like a task's. `plan_id` None: the run made no plan to name (the repo still pays)."""
    if tokens_in or tokens_out:
        session.add(
            Charge(
                plan_id=plan_id,
                repo=repo,
                model=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost_nanos=cost_nanos,
                at=at,
            )
        )


def spent_on_plan(session: Session, plan_id: int) -> Spent:
    """What planning plan `plan_id` cost (its planner runs, re-plans included; not its tasks)."""
    unpriced = case(
        (col(Charge.cost_nanos).is_(None), col(Charge.tokens_in) + col(Charge.tokens_out)),
        else_=0,
    )
    nanos, tokens = session.exec(
        select(
            func.coalesce(func.sum(Charge.cost_nanos), 0), func.coalesce(func.sum(unpriced), 0)
        ).where(col(Charge.plan_id) == plan_id)
    ).one()
    return Spent(int(nanos), int(tokens))


def spent_by_repo(session: Session, start: datetime, end: datetime) -> dict[str, Spent]:
    """What was charged in [start, end), per repo."""
    unpriced = case(
        (col(Charge.cost_nanos).is_(None), col(Charge.tokens_in) + col(Charge.tokens_out)),
        else_=0,
    )
    rows = session.exec(
        select(
            Charge.repo,
            func.coalesce(func.sum(Charge.cost_nanos), 0),
            func.coalesce(func.sum(unpriced), 0),
        )
        .where(col(Charge.at) >= start, col(Charge.at) < end)
        .group_by(Charge.repo)
    ).all()
    # PostgreSQL sums BIGINT as NUMERIC (Decimal); SQLite as int.
    return {repo: Spent(int(nanos), int(tokens)) for repo, nanos, tokens in rows}
