"""What a plan may cost, against what is left of today's budgets: said before it is queued;
and whether a new plan may be made at all (a planner run costs model calls too).

The estimate is a ceiling, not a forecast: each task's size takes a share of its repo's
per-task cost cap (`limits.max_cost_usd`, which stops a task anyway), S a quarter, M half,
L all of it. Pure but for `Books.today` (today's spend)."""

from __future__ import annotations

from sqlmodel import Session

from executor.config.schema import RepoConfig
from executor.costs.budget import ALL, Books, crossed
from executor.costs.pricing import to_nanos, usd
from storage.plan_draft import PlanDraft, Size

SHARE = {Size.S: 0.25, Size.M: 0.5, Size.L: 1.0}


def estimate_nanos(draft: PlanDraft, repo: RepoConfig) -> int:
    cap = to_nanos(repo.limits.max_cost_usd)
    return sum(int(cap * SHARE[task.size]) for task in draft.tasks)


def over_budget(session: Session, books: Books, repo_name: str, estimate: int) -> str | None:
    """A sentence if the estimate is more than today's budgets (all repos, or this repo's)
    have left; None when it fits or there is no budget."""
    _, budgets = books.today(session)
    for budget in budgets:
        left = budget.left_nanos
        if budget.scope in (ALL, repo_name) and left is not None and estimate > left:
            return (
                f"this plan may cost up to {usd(estimate)}, more than the {usd(left)} left of"
                f" today's budget for {budget.name}: some tasks will wait for tomorrow's budget"
            )
    return None


def planning_refused(session: Session, books: Books, repo_name: str) -> str | None:
    """Why no planner may run for `repo_name` now (a daily budget covering it is reached),
    or None. Checked where a plan is asked for and again where the planner would run."""
    day, budgets = books.today(session)
    reason = crossed(budgets, repo_name)
    if reason is None:
        return None
    return (
        f"no new plan: {reason}; planning costs model calls too. Try again after midnight"
        f" {day.tz.key}, or raise the budget in nightcrew.yaml"
    )
