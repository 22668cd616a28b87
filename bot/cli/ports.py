"""The servers a long-running command opens beside its work, and their addresses: the
admin port (/healthz, /metrics), the task pages and the review queue, Slack's HTTP-mode
listener; a port that cannot be opened is one clear line naming it and its option."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import typer

from bot.actions import ActionError
from bot.cli.composition import config, engine, settings, signer
from bot.cli.console import out
from storage.models import Task

if TYPE_CHECKING:
    from bot.slack.app import SlackEnv


# Every server a command opens, with its options and environment variables (docs/CLI.md).
ADMIN_OPTION = "--admin-port (NIGHTCREW_ADMIN_PORT)"
WEB_OPTION = "--web-port (NIGHTCREW_WEB_PORT; -1: no pages)"
SLACK_OPTION = "--port (NIGHTCREW_PORT)"


def addresses(**given: object) -> None:
    """The command line's addresses over the environment's (`Settings`: NIGHTCREW_HOST,
    NIGHTCREW_PORT, NIGHTCREW_ADMIN_HOST, …); None: not given."""
    env = settings()
    for name, value in given.items():
        if value is not None:
            setattr(env, name, value)


def cannot_listen(what: str, host: str, port: int, option: str, exc: OSError) -> ActionError:
    """One clear line for a server that cannot open its port: which, why, what to change."""
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use (another nightcrew, or another program)"
    else:
        why = exc.strerror or str(exc)
    return ActionError(f"cannot serve {what} on {host}:{port}: {why}; choose another with {option}")


@contextmanager
def admin_port(role: str) -> Iterator[None]:
    """/healthz and /metrics on the admin port while the process runs (if set)."""
    env = settings()
    if not env.admin_port:
        yield
        return
    from executor.monitoring.admin import serve_admin

    with ExitStack() as stack:
        host, port = env.admin_host, env.admin_port
        try:
            url = stack.enter_context(serve_admin(engine(), role=role, host=host, port=port))
        except OSError as exc:  # the port is taken, or the address is not ours
            raise cannot_listen("the admin port", host, port, ADMIN_OPTION, exc) from None
        out.print(f"admin: {url}/healthz and {url}/metrics")
        yield


def may_decide(user: str) -> Callable[[Task], bool]:
    """Who sees a task on the /review page: the host's own user every task (the terminal
    acts as it), a Slack user the tasks Slack would let them approve."""
    from bot.slack.handle import may_decide as slack_may_decide

    if user.startswith("local:"):
        return lambda task: True
    return slack_may_decide(config(), user)


def _secrets() -> list[str | None]:
    """This installation's secret values, which no page may show: the model's key, Slack's
    tokens, and the variables every repo hands its agent (`agent_env`)."""
    import contextlib
    import os

    names = {"OPENAI_API_KEY", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"}
    # A broken config is reported elsewhere; the known names still count.
    with contextlib.suppress(Exception):
        names |= {n for repo in config().repos.values() for n in repo.agent_env}
    return [settings().openai_api_key, *(os.environ.get(n) for n in sorted(names))]


@contextmanager
def web_pages() -> Iterator[None]:
    """The task pages and the review queue on the web host and port while the process runs
    (-1: none)."""
    env = settings()
    if env.web_port < 0:
        yield
        return
    from bot.web.app import serve_web

    with ExitStack() as stack:
        try:
            url = stack.enter_context(
                serve_web(
                    engine(),
                    signer(),
                    host=env.web_host,
                    port=env.web_port,
                    may_decide=may_decide,
                    secrets=_secrets(),
                )
            )
        except OSError as exc:
            where = (env.web_host, env.web_port)
            raise cannot_listen("the task pages", *where, WEB_OPTION, exc) from None
        public = env.public_url or (
            f"{signer().public_url} (set NIGHTCREW_PUBLIC_URL to the address people reach)"
        )
        out.print(f"pages: {url}; links point at {public}", soft_wrap=True, markup=False)
        yield


def _host(flag: str, what: str, env: str) -> Any:
    return typer.Option(
        None, flag, help=f"Address {what} listens on [env {env}; default 127.0.0.1]."
    )


def _port(flag: str, what: str, env: str, default: str, low: int = 0) -> Any:
    return typer.Option(
        None,
        flag,
        min=low,
        max=65535,
        help=f"Port {what} listens on; 0: any free one [env {env}; default {default}].",
    )


SLACK_HOST = _host("--host", "the Slack HTTP server (HTTP mode)", "NIGHTCREW_HOST")
SLACK_PORT = _port("--port", "the Slack HTTP server (HTTP mode)", "NIGHTCREW_PORT", "3000")
ADMIN_HOST = _host("--admin-host", "/healthz and /metrics", "NIGHTCREW_ADMIN_HOST")
ADMIN_PORT = _port("--admin-port", "/healthz and /metrics", "NIGHTCREW_ADMIN_PORT", "off")
WEB_HOST = _host("--web-host", "the task pages", "NIGHTCREW_WEB_HOST")
WEB_PORT = _port("--web-port", "the task pages (-1: none)", "NIGHTCREW_WEB_PORT", "8780", -1)


@contextmanager
def slack_listener(slack: SlackEnv | None, *, http: bool) -> Iterator[socket.socket | None]:
    """HTTP mode's listening socket, bound before anything starts, so a taken port is one
    clear error at once (None: Socket Mode, or no Slack)."""
    if slack is None or not (http or not slack.app_token) or not slack.signing_secret:
        yield None
        return
    from bot.slack.http_server import listen

    env = settings()
    try:
        listener = listen(env.host, env.port)
    except OSError as exc:
        raise cannot_listen("Slack's HTTP mode", env.host, env.port, SLACK_OPTION, exc) from None
    try:
        yield listener
    finally:
        listener.close()
