"""How a command speaks: tables and colour on stdout at a terminal, plain lines in a pipe
(`out`), notes and errors on stderr (`err`); the errors a person can cause as one line and an
exit code (0 ok, 1 error, 2 usage or config; docs/CLI.md); the output options commands
share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from bot.actions import ActionError
from bot.terminal.output import Output
from executor.config.schema import ConfigError
from storage.errors import StorageError
from storage.lifecycle import IllegalTransition
from storage.text import clean

out = Output(Console(highlight=False))  # tables and colour on a terminal, plain lines in a pipe
# Never hard-wrapped: an error is one line in a pipe or a log, whatever COLUMNS says.
err = Console(stderr=True, highlight=False, soft_wrap=True)


class BadValue(ActionError):
    """A value an option does not take: a usage error (exit 2), said in one line."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a person can cause into one line on stderr and a non-zero exit."""
    try:
        yield
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {escape(clean(str(exc)))}")
        raise typer.Exit(2) from None
    except (ActionError, StorageError, IllegalTransition) as exc:  # may quote stored text
        err.print(f"[red]error:[/red] {escape(clean(str(exc)))}")
        raise typer.Exit(2 if isinstance(exc, BadValue) else 1) from None


AS_JSON = typer.Option(False, "--json", help="Print JSON instead (docs/CLI.md lists the fields).")
NO_HEADER = typer.Option(False, "--no-header", help="Leave out the table's header line.")
