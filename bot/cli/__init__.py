"""The `nightcrew` command: the terminal front end and the composition root. Nothing outside
this package imports it; its modules import each other.

- composition.py: settings, engine, config, signer, made once per process and handed out
- console.py: stdout and stderr, user errors as one line and an exit code, shared options
- ports.py: the servers a long-running command opens (admin port, pages, Slack HTTP)
- serve.py: up, bot, executor
- install.py: doctor, slack-manifest, init, image build
- tasks.py: add, review, ls, show, log, diff
- plans.py: plan (and `show p<id>`)
- steer.py: nudge, cancel, retry, approve, reject
- reports.py: budget, repos, digest
- schedules.py: schedule add, list, pause, resume, delete

Commands are registered here, in the order `nightcrew --help` lists them."""

from __future__ import annotations

from typing import Any

import typer

from bot.cli import install, plans, reports, schedules, serve, steer, tasks

app = typer.Typer(
    name="nightcrew",
    help="Run a fleet of AI coding agents in Docker sandboxes; steer them from Slack or here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def main() -> None:
    command = typer.main.get_command(app)
    plain_metavars(command)
    command(prog_name="nightcrew")


def plain_metavars(command: Any) -> None:
    """`--repo REPO` and `PROMPT` in `--help`, as click writes them, not typer's `<str>`,
    `<list[str]>` and `{prompt}`; a metavar a command chose itself stays."""
    for param in command.params:
        if not getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = (param.name or "value").rstrip("_").upper()
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)


@app.callback()
def _everywhere(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        envvar="NIGHTCREW_VERBOSE",
        help="Also show the libraries' warnings and notes (before the command: nightcrew -v up).",
    ),
) -> None:
    """Run a fleet of AI coding agents in Docker sandboxes; steer them from Slack or here."""
    from bot.terminal import noise

    noise.configure(verbose)


app.command()(serve.up)
app.command()(serve.bot)
app.command()(serve.executor)
app.command()(install.doctor)
app.command("slack-manifest")(install.slack_manifest)
app.command()(install.init)
app.command()(tasks.add)
app.command()(tasks.review)
app.command("ls")(tasks.ls)
app.command()(tasks.show)
app.command()(plans.plan)
app.command()(tasks.log)
app.command()(tasks.diff)
app.command()(steer.nudge)
app.command()(steer.cancel)
app.command()(steer.retry)
app.command()(steer.approve)
app.command()(steer.reject)
app.command()(reports.budget)
app.command()(reports.repos)
app.command()(reports.digest)
app.add_typer(schedules.schedule_app, name="schedule")
app.add_typer(install.image_app, name="image")
