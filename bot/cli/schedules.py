"""`nightcrew schedule`: recurring tasks (add, list, pause, resume, delete)."""

from __future__ import annotations

import typer

from bot.cli.composition import config, engine, local_user
from bot.cli.console import out, user_errors
from storage.db import transaction
from storage.models import utcnow

schedule_app = typer.Typer(
    help="Recurring tasks: each fire time of a cron expression queues a normal task.",
    no_args_is_help=True,
)


@schedule_app.command("add")
def schedule_add(
    cron: str = typer.Argument(
        ..., help='Five fields, minute hour day month weekday ("0 9 * * 1"), or @daily, @weekly.'
    ),
    prompt: str = typer.Argument(..., help="What the agent should do at each firing."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    tz: str | None = typer.Option(
        None, "--tz", help="Time zone of the cron (default: the digest's, from nightcrew.yaml)."
    ),
    channel: str | None = typer.Option(
        None, "--channel", help="Slack channel id for the tasks' cards (default: none, CLI only)."
    ),
) -> None:
    """Add a schedule; it first fires at its next cron time."""
    from bot import schedules

    with user_errors(), transaction(engine()) as session:
        added = schedules.add(
            session,
            config(),
            cron=cron,
            prompt=prompt,
            creator=local_user(),
            repo=repo,
            channel=channel,
            timezone=tz,
        )
        line = schedules.describe(added, utcnow())
    out.print(f"added schedule {line}", markup=False)


@schedule_app.command("list")
def schedule_list() -> None:
    """List the schedules with their next fire time."""
    from bot import schedules
    from storage.schedules import list_schedules

    with user_errors(), transaction(engine()) as session:
        lines = [schedules.describe(s, utcnow()) for s in list_schedules(session)]
    for line in lines or ["no schedules; add one with `nightcrew schedule add`"]:
        out.print(line, markup=False)


def _change_schedule(schedule_id: int, change: str) -> None:
    from bot import schedules

    with user_errors(), transaction(engine()) as session:
        if change == "delete":
            message = schedules.delete(session, config(), schedule_id, actor=local_user())
        else:
            message = schedules.pause(
                session, config(), schedule_id, actor=local_user(), paused=change == "pause"
            )
    out.print(message)


@schedule_app.command("pause")
def schedule_pause(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Stop a schedule from firing until it is resumed."""
    _change_schedule(schedule_id, "pause")


@schedule_app.command("resume")
def schedule_resume(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Let a paused schedule fire again (from its next fire time; missed ones are skipped)."""
    _change_schedule(schedule_id, "resume")


@schedule_app.command("delete")
def schedule_delete(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Delete a schedule; the tasks it queued stay."""
    _change_schedule(schedule_id, "delete")
