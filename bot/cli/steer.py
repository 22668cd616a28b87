"""The commands that steer a task, each a user action (bot/actions.py) taken as the local
user: nudge, cancel, retry, approve, reject."""

from __future__ import annotations

from collections.abc import Callable

import typer

from bot import actions
from bot.actions import Outcome
from bot.cli.composition import config, engine, local_user
from bot.cli.console import out, user_errors
from storage.db import transaction
from storage.tasks import get_task


def act(
    action: Callable[..., Outcome],
    task_id: str,
    *args: str,
    decides: bool = False,
    names_base: bool = False,
) -> None:
    """Run a user action as the local user; `decides`: it needs the requester or an
    approver of the task's repo; `names_base`: its message names the base branch."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            extra: dict = {}
            repo = config().repos.get(get_task(session, tid).repo) if decides else None
            if decides:
                extra["approvers"] = repo.approvers if repo else []
            if names_base and repo:
                extra["base"] = repo.base_branch
            outcome = action(session, tid, *args, actor=local_user(), **extra)
        out.print(outcome.message)


def nudge(
    task_id: str = typer.Argument(..., help="Task id."),
    text: str = typer.Argument(..., help="What to tell the agent."),
) -> None:
    """Tell a task's agent something; a waiting task goes back to work with it."""
    act(actions.nudge, task_id, text)


def cancel(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Cancel a task (a working agent stops at its next step)."""
    act(actions.cancel, task_id, decides=True)


def retry(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Queue a failed, cancelled or stuck task again."""
    act(actions.retry, task_id)


def approve(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Approve a task awaiting approval; it is merged next."""
    act(actions.approve, task_id, decides=True, names_base=True)


def reject(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Reject a task; its branch is never merged."""
    act(actions.reject, task_id, decides=True)
