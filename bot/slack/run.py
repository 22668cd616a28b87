"""How the bot runs: Socket Mode (SLACK_APP_TOKEN; no public URL needed) or HTTP mode
(Bolt's /slack/events, signatures checked with SLACK_SIGNING_SECRET), plus the notifier
thread that delivers the outbox."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from sqlalchemy import Engine

from bot.links import Signer
from bot.slack import pending_files
from bot.slack.app import SlackEnv, build_app, files_client, notifier_client, wsgi_app
from bot.slack.http_server import http_workers
from bot.slack.notifier import Notifier, Tunables
from executor.config.schema import Config
from storage.db import checkpoint

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 1  # HTTP mode; more pay off with PostgreSQL and spare cores (README)


@contextmanager
def background(name: str, work: Callable[[threading.Event], object]) -> Iterator[threading.Event]:
    """`work(stop)` in a daemon thread while the block runs; leaving it sets `stop` and gives
    the thread 10 s to finish what it is doing (the notifier: the post it is sending)."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)


@contextmanager
def notifier_thread(
    engine: Engine, env: SlackEnv, tunables: Tunables | None = None, signer: Signer | None = None
) -> Iterator[Notifier]:
    notifier = Notifier(engine, notifier_client(env), tunables or Tunables(), signer)
    with background("notifier", notifier.run):
        yield notifier


@contextmanager
def recovering_files(
    engine: Engine, env: SlackEnv, every_s: float = pending_files.RECOVER_EVERY_S
) -> Iterator[None]:
    """The thread that fetches the files of replies written before a restart (or whose
    fetch failed) and never completed: at once, then every `every_s` seconds."""

    client = files_client(env)

    def recover(stop: threading.Event) -> None:
        pending_files.keep_recovering(engine, client, stop, cap=env.file_max_bytes, every_s=every_s)

    with background("reply-files", recover):
        yield


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


@contextmanager
def http_mode(app: App, *, host: str = "127.0.0.1", port: int = 3000) -> Iterator[str]:
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
    host: str = "127.0.0.1",
    port: int = 3000,
    listener: socket.socket | None = None,
    workers: int = DEFAULT_WORKERS,
    say: Callable[[str], None] = print,
    signer: Signer | None = None,
    tunables: Tunables | None = None,
) -> None:
    """Run the bot, the notifier (with `tunables`) and the reply files' recovery
    (`pending_files`) until `stop` is set. HTTP mode serves
    from `workers` child processes (bot/slack/http_server.py); the notifier runs here, once.
    The scheduler (digest, scheduled tasks) is started beside it by the composition root
    (bot/cli/serve.py). HTTP mode listens on `host`:`port`, or on `listener` when the caller bound
    it already."""
    with notifier_thread(engine, env, tunables, signer=signer), recovering_files(engine, env):
        if http or not env.app_token:
            if not env.signing_secret:
                raise ValueError("HTTP mode needs SLACK_SIGNING_SECRET")
            with http_workers(host=host, port=port, workers=workers, listener=listener) as served:
                say(f"Slack bot: HTTP mode at {served.url} ({workers} worker processes)")
                while not stop.wait(0.5):  # short waits keep signals (Ctrl-C, SIGTERM) prompt
                    served.check()
                    _checkpoint(engine)
        else:
            app = build_app(engine, config, env, signer=signer)
            with socket_mode(app, env):
                say("Slack bot: connected over Socket Mode")
                while not stop.wait(0.5):  # short waits keep signals (Ctrl-C, SIGTERM) prompt
                    pass
