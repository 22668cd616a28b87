"""The long-running commands: `up` (everything in one process), `bot` (the Slack bot and
its notifier alone) and `executor` (tasks from the queue in Docker sandboxes)."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from sqlalchemy import func
from sqlmodel import select

from bot.actions import ActionError
from bot.cli.composition import config, engine, llm_client, model_name, settings, signer
from bot.cli.console import err, out, user_errors
from bot.cli.ports import (
    ADMIN_HOST,
    ADMIN_PORT,
    SLACK_HOST,
    SLACK_PORT,
    WEB_HOST,
    WEB_PORT,
    addresses,
    admin_port,
    slack_listener,
    web_pages,
)
from executor.config.redact import redact
from executor.config.schema import ConfigWatch
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task

if TYPE_CHECKING:
    from bot.slack.app import SlackEnv
    from bot.slack.notifier import Tunables as NotifierTunables


def notifier_tunables() -> NotifierTunables:
    """The notifier's tunables, with what the environment sets (NIGHTCREW_SLACK_MAX_AGE_H)."""
    from bot.slack.notifier import Tunables

    return Tunables(max_age_s=settings().slack_max_age_h * 3600)


def up(
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Tasks at once."),
    host: str | None = SLACK_HOST,
    port: int | None = SLACK_PORT,
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
    web_host: str | None = WEB_HOST,
    web_port: int | None = WEB_PORT,
) -> None:
    """Run nightcrew in one process: the executor and the scheduler, plus the Slack bot, its
    notifier and the digest when Slack tokens are set."""
    from bot.scheduler import Scheduler
    from bot.slack.app import SlackEnv

    with user_errors():
        addresses(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port_,
            web_host=web_host,
            web_port=web_port,
        )
        cfg = config()
        with transaction(engine()) as session:
            counts = dict(session.exec(select(Task.state, func.count()).group_by(Task.state)).all())
        out.print(f"database: {redact(settings().db_url)}")  # never its password
        out.print(f"repos: {', '.join(cfg.repos)}")
        out.print(f"tasks: {counts.get(State.QUEUED, 0)} queued, {sum(counts.values())} in all")
        model_name(cfg, settings())  # none named: say so before any server opens
        slack = SlackEnv.from_env()
        with slack_listener(slack, http=False) as listener, admin_port("up"), web_pages():
            if slack is None:
                err.print(
                    "[yellow]Slack is not connected:[/yellow] set SLACK_BOT_TOKEN and "
                    "SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode); "
                    "`nightcrew slack-manifest` prints the Slack app's manifest. Running the "
                    "executor only; queue tasks with `nightcrew add`."
                )
                with Scheduler(engine(), config, digests=False):  # scheduled tasks still fire
                    _run_executor(concurrency, drain=False)
                return
            with _bot_in_background(slack, listener):
                _run_executor(concurrency, drain=False)


@contextmanager
def _bot_in_background(slack: SlackEnv, listener: socket.socket | None) -> Iterator[None]:
    """The Slack bot and notifier in threads beside the executor; they meet in the
    database, so neither calls the other."""
    from bot.scheduler import Scheduler
    from bot.slack.run import background, run_bot

    def serve(stop: threading.Event) -> None:
        try:
            with Scheduler(engine(), config):  # the digest and scheduled tasks
                run_bot(
                    engine(),
                    config,
                    slack,
                    stop=stop,
                    say=out.print,
                    signer=signer(),
                    listener=listener,
                    tunables=notifier_tunables(),
                )
        except Exception as exc:  # say so; the executor keeps running CLI-queued tasks
            err.print(f"[red]Slack bot stopped:[/red] {exc}")

    with background("slack-bot", serve):
        yield


def bot(
    http: bool = typer.Option(
        False,
        "--http",
        help="HTTP mode (/slack/events) instead of Socket Mode; needs SLACK_SIGNING_SECRET.",
    ),
    host: str | None = SLACK_HOST,
    port: int | None = SLACK_PORT,
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, help="HTTP mode: server processes (the notifier runs once)."
    ),
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
    web_host: str | None = WEB_HOST,
    web_port: int | None = WEB_PORT,
) -> None:
    """Run the Slack bot and its notifier alone (executors run elsewhere on the same DB)."""
    from bot.scheduler import Scheduler
    from bot.slack.app import SlackEnv
    from bot.slack.run import run_bot

    with user_errors():
        addresses(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port_,
            web_host=web_host,
            web_port=web_port,
        )
        slack = SlackEnv.from_env()
        if slack is None:
            raise ActionError(
                "SLACK_BOT_TOKEN is not set; create the Slack app from the manifest that "
                "`nightcrew slack-manifest` prints"
            )
        if not http and not slack.app_token:
            raise ActionError("Socket Mode needs SLACK_APP_TOKEN; or use --http")
        if http and not slack.signing_secret:
            raise ActionError("HTTP mode needs SLACK_SIGNING_SECRET")
        config()  # a broken nightcrew.yaml fails now, not at the first slash command
        stop = threading.Event()
        # SIGTERM (docker stop, systemd) stops gracefully: the notifier finishes the message
        # it is sending and records it, so a restart does not post it again.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            with (
                slack_listener(slack, http=http) as listener,
                admin_port("bot"),
                web_pages(),
                Scheduler(engine(), config),
            ):
                run_bot(
                    engine(),
                    config,
                    slack,
                    stop=stop,
                    http=http,
                    listener=listener,
                    workers=workers,
                    say=out.print,
                    signer=signer(),
                    tunables=notifier_tunables(),
                )
        except KeyboardInterrupt:
            stop.set()


def executor(
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Tasks at once."),
    drain: bool = typer.Option(False, "--drain", help="Exit when the queue is empty."),
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
) -> None:
    """Run tasks from the queue in Docker sandboxes."""
    with user_errors():
        addresses(admin_host=admin_host, admin_port=admin_port_)
        with admin_port("executor"):
            _run_executor(concurrency, drain=drain)


def _run_executor(concurrency: int, *, drain: bool) -> None:
    from executor.runner.pool import run_executor
    from executor.sandbox.container import SandboxError

    cfg, env = config(), settings()
    model_name(cfg, env)  # none named: say so before anything starts

    try:
        done = run_executor(
            engine=engine(),
            config=cfg,
            home=env.home,
            make_llm=lambda: llm_client(cfg, env),
            concurrency=concurrency,
            drain=drain,
            heartbeat_timeout_s=env.heartbeat_timeout_s,
            idle_poll_s=env.idle_poll_s,
            log=out.print,
            reload_config=ConfigWatch(env.config_path, cfg),
        )
    except SandboxError as exc:
        raise ActionError(str(exc)) from None
    # A run is one stint of work: a task's, a merge or a plan's, so merges count too.
    out.print(f"did {done} run(s) of work (tasks, merges, plans)")
