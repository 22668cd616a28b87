"""The reports: today's spend against the budgets, the configured repos, the digest now."""

from __future__ import annotations

import typer
from rich.console import Group

from bot.cli.composition import config, engine, local_user
from bot.cli.console import AS_JSON, NO_HEADER, err, out, user_errors
from bot.terminal import records, render
from storage.db import transaction
from storage.models import utcnow


def budget(as_json: bool = AS_JSON, no_header: bool = NO_HEADER) -> None:
    """Show today's spend against the daily budgets (nightcrew.yaml `budgets:`), per repo."""
    from executor.costs.budget import WAITING, Books
    from storage.queue import waiting_by_repo

    with user_errors():
        books = Books.of(config())
        with transaction(engine()) as session:
            day, budgets = books.today(session)
            waiting = waiting_by_repo(session, marker=WAITING)
    if as_json:
        out.json(records.budgets(day, budgets, waiting))
        return
    out.header = not no_header
    head, table, note = render.budget_table(day, budgets, waiting).renderables
    if out.terminal:
        out.print(Group(head, table, note))
    else:  # a script reads the rows; the day and the note are for people
        err.print(head)
        out.print(table)
    if not books.budgets.any:
        err.print("no budgets set; add `budgets: {daily_usd: 20}` to nightcrew.yaml")


def repos(as_json: bool = AS_JSON, no_header: bool = NO_HEADER) -> None:
    """List the configured repos."""
    with user_errors():
        cfg = config()
    if as_json:
        out.json(records.repos(cfg))
        return
    out.header = not no_header
    out.print(render.repos_table(cfg))
    if cfg.source is None:
        err.print("(no nightcrew.yaml: using the current git repo; `nightcrew init` writes one)")


def digest(
    mine: bool = typer.Option(False, "--mine", help="Only tasks you (the local user) asked for."),
    as_json: bool = AS_JSON,
) -> None:
    """Print the digest now: since the last scheduled one, what waits for approval (riskiest
    first), what merged, failed or is still open, and the totals. Sends nothing."""
    from zoneinfo import ZoneInfo

    from bot.slack import digest_send as digests

    with user_errors():
        cfg = config()
        with transaction(engine()) as session:
            requester = local_user() if mine else None
            data, _, _ = digests.on_demand(session, cfg, utcnow(), requester=requester)
    if as_json:
        out.json(records.digest(data))
        return
    out.print(render.digest(data, ZoneInfo(cfg.digest.timezone), full=not out.terminal))
