"""The Bolt app and how it runs: Socket Mode (SLACK_APP_TOKEN; no public URL needed) or HTTP
mode (Bolt's /slack/events, signatures checked with SLACK_SIGNING_SECRET), plus the notifier
thread that delivers the outbox and the scheduler (digest, scheduled tasks)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dotenv import dotenv_values
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from sqlalchemy import Engine

from bot.scheduler import Scheduler
from bot.slack.http_server import http_workers
from bot.slack.listeners import register
from bot.slack.notifier import Notifier, Tunables
from executor.config import Config
from storage.db import checkpoint

log = logging.getLogger(__name__)
SLACK_API = "https://slack.com/api/"
DEFAULT_WORKERS = 1  # HTTP mode; more pay off with PostgreSQL and spare cores (README)


@dataclass(frozen=True)
class SlackEnv:
    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None
    api_url: str = SLACK_API

    @classmethod
    def from_env(cls) -> SlackEnv | None:
        """From the environment, then `.env` in the working directory (as for the other
        settings); None when Slack is not configured (no SLACK_BOT_TOKEN)."""
        env = {**dotenv_values(".env"), **os.environ}
        token = env.get("SLACK_BOT_TOKEN")
        if not token:
            return None
        return cls(
            bot_token=token,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            api_url=env.get("SLACK_API_URL") or SLACK_API,
        )


def build_app(engine: Engine, config: Callable[[], Config], env: SlackEnv) -> App:
    """The Bolt app with every listener. Calls auth.test at once (Bolt checks its token)."""
    client = WebClient(
        token=env.bot_token, base_url=env.api_url, retry_handlers=[RateLimitErrorRetryHandler()]
    )
    app = App(
        client=client,
        signing_secret=env.signing_secret or "",
        # Socket Mode requests carry no signature; HTTP mode always verifies.
        request_verification_enabled=env.signing_secret is not None,
        # Ack functions answer in the request itself; Bolt's default would run them in a
        # thread and poll for the ack every 10 ms. Slow work runs in lazy listeners.
        process_before_response=True,
        logger=log,
    )
    register(app, engine, config)
    return app


def notifier_client(env: SlackEnv) -> WebClient:
    # No SDK retries: a resend after a lost answer would post twice. The notifier retries
    # per outbox row instead.
    return WebClient(token=env.bot_token, base_url=env.api_url, retry_handlers=[], timeout=30)


@contextmanager
def notifier_thread(
    engine: Engine, env: SlackEnv, tunables: Tunables | None = None
) -> Iterator[Notifier]:
    notifier = Notifier(engine, notifier_client(env), tunables or Tunables())
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(stop,), name="notifier", daemon=True)
    thread.start()
    try:
        yield notifier
    finally:
        stop.set()
        thread.join(timeout=10)


@contextmanager
def socket_mode(app: App, env: SlackEnv) -> Iterator[SocketModeHandler]:
    if not env.app_token:
        raise ValueError("Socket Mode needs SLACK_APP_TOKEN (an xapp- token)")
    handler = SocketModeHandler(app, env.app_token)
    handler.connect()
    try:
        yield handler
    finally:
        handler.client.auto_reconnect_enabled = False
        # slack_sdk's builtin client races its own receiver thread when the socket is
        # closed from both ends at once (sock becomes None between its check and close()).
        with contextlib.suppress(AttributeError):
            handler.close()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # one slow request must not hold up another's ack
    request_queue_size = 128  # the default backlog of 5 drops bursts of connections (1 s SYN retry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def wsgi_app(app: App) -> Callable[..., Any]:
    """Bolt's WSGI handler behind two guards: only POST /slack/events, and a body Bolt cannot
    parse (it parses before verifying the signature) is a 400, not a 500 with a traceback."""
    bolt = SlackRequestHandler(app)

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/slack/events" or environ["REQUEST_METHOD"] != "POST":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        try:
            return bolt(environ, start_response)
        except Exception:
            log.info("refused a request Bolt could not parse", exc_info=True)
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"malformed request"]

    return handle


@contextmanager
def http_mode(app: App, *, host: str = "0.0.0.0", port: int = 3000) -> Iterator[str]:
    """Serve /slack/events from threads of this process (tests; `nightcrew bot --http`
    runs worker processes instead, see http_server.py); yields its URL."""
    server = make_server(host, port, wsgi_app(app), _ThreadingServer, _QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}/slack/events"
    finally:
        server.shutdown()
        server.server_close()


def _checkpoint(engine: Engine) -> None:
    """The HTTP workers never checkpoint SQLite's WAL (see http_server.application)."""
    try:
        checkpoint(engine)
    except Exception:  # a busy or vanished database must not stop the bot
        log.warning("WAL checkpoint failed; trying again shortly", exc_info=True)


def run_bot(
    engine: Engine,
    config: Callable[[], Config],
    env: SlackEnv,
    *,
    stop: threading.Event,
    http: bool = False,
    port: int = 3000,
    workers: int = DEFAULT_WORKERS,
    say: Callable[[str], None] = print,
) -> None:
    """Run the bot, the notifier and the scheduler (digest, scheduled tasks) until `stop`
    is set. HTTP mode serves from `workers` child processes (bot/slack/http_server.py); the
    notifier and the scheduler run here, once."""
    with notifier_thread(engine, env), Scheduler(engine, config):
        if http or not env.app_token:
            if not env.signing_secret:
                raise ValueError("HTTP mode needs SLACK_SIGNING_SECRET")
            with http_workers(port=port, workers=workers) as served:
                say(f"Slack bot: HTTP mode at {served.url} ({workers} worker processes)")
                while not stop.wait(0.5):  # short waits keep signals (Ctrl-C, SIGTERM) prompt
                    served.check()
                    _checkpoint(engine)
        else:
            app = build_app(engine, config, env)
            with socket_mode(app, env):
                say("Slack bot: connected over Socket Mode")
                while not stop.wait(0.5):  # short waits keep signals (Ctrl-C, SIGTERM) prompt
                    pass
