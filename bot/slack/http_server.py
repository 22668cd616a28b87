"""HTTP mode's server: gunicorn with several worker processes, each running the Bolt app.

One interpreter serving every request holds the GIL for all of them: under a burst of slash
commands the acks queue behind each other and behind thread switches. Worker processes
share the listening socket instead. Each is a uvicorn worker (C HTTP parser, uvloop, keep-
alive) in front of Bolt (`asgi.py`): gunicorn's own threaded workers parsed HTTP in Python,
which cost about as much CPU per ack as the ack's own work. The
notifier is not here: it stays in the `nightcrew bot` process that starts this server as a
child, so it runs exactly once however many workers there are.

    python -m bot.slack.http_server --bind 127.0.0.1:3000 --workers 1

The workers build the app from the same environment and working directory as the parent
(`NIGHTCREW_*`, `SLACK_*`, `.env`, `nightcrew.yaml`). The server stops when its parent dies."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

PARENT_ENV = "NIGHTCREW_BOT_PID"  # the process whose death stops this server
THREADS = 4  # per worker: enough to overlap a database wait, few enough to keep the GIL calm
KEEPALIVE_S = 5  # Slack reuses connections; a reconnect per request costs both ends


def application() -> Callable[..., Any]:
    """The WSGI app of one worker process (gunicorn calls this after forking). Its commits
    leave SQLite's WAL checkpoints (and their fsync) to the `nightcrew bot` process: one
    inside an ack's write turn made every ack behind it wait for the disk."""
    from bot.links import Signer
    from bot.slack.app import SlackEnv, build_app
    from bot.slack.asgi import asgi_app
    from executor.config.schema import Config, load_config
    from executor.config.settings import here
    from executor.monitoring.admin import health
    from storage.db import make_engine

    env = SlackEnv.from_env()
    if env is None:
        raise RuntimeError("SLACK_BOT_TOKEN is not set")
    settings = here()  # the same environment and project as `nightcrew bot`

    @functools.cache
    def config() -> Config:
        return load_config(settings.config_path)

    engine = make_engine(settings.db_url, create=False, autocheckpoint=False)
    signer = Signer.from_settings(settings)  # page links in `/agent review` and the App Home
    app = build_app(engine, config, env, signer=signer)
    return asgi_app(app, health=lambda: health(engine, "bot"), threads=THREADS)


class _Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
    }


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        return application()


def _die_with_parent(_server: Any) -> None:
    """Linux: SIGTERM this server when the `nightcrew bot` process that started it dies,
    even by SIGKILL; an orphaned server would go on acking commands beside a new one."""
    parent = int(os.environ.get(PARENT_ENV, "0"))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="nightcrew's Slack HTTP server (gunicorn)")
    parser.add_argument("--bind", default="127.0.0.1:3000", help="HOST:PORT or fd://FD")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    _Gunicorn(
        {
            "bind": args.bind,
            "workers": args.workers,
            "worker_class": _Worker,
            "keepalive": KEEPALIVE_S,
            "backlog": 512,
            "graceful_timeout": 10,
            "accesslog": None,
            "loglevel": "warning",
            "proc_name": "nightcrew-slack-http",
            "when_ready": _die_with_parent,
        }
    ).run()


@dataclass(frozen=True)
class Served:
    url: str  # /slack/events
    child: subprocess.Popen[bytes]

    def check(self) -> None:
        """Raise if the server has exited (a worker that cannot boot stops gunicorn)."""
        if self.child.poll() is not None:
            raise RuntimeError(f"the Slack HTTP server exited (code {self.child.returncode})")


def listen(host: str, port: int) -> socket.socket:
    """The HTTP server's listening socket (OSError if the address is taken or not ours)."""
    return socket.create_server((host, port), backlog=512)


@contextmanager
def http_workers(
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    workers: int = 1,
    listener: socket.socket | None = None,
) -> Iterator[Served]:
    """Run the server as a child process until the block ends. The listening socket is made
    here (or given, already bound: a taken port is then an error before anything starts)
    and handed over (`fd://`): connections queue from the start, and port 0 works."""
    listener = listener or listen(host, port)
    host = listener.getsockname()[0]
    listener.set_inheritable(True)
    bound = listener.getsockname()[1]
    command = [sys.executable, "-m", "bot.slack.http_server"]
    command += ["--bind", f"fd://{listener.fileno()}", "--workers", str(workers)]
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    try:
        child = subprocess.Popen(command, env=env, pass_fds=(listener.fileno(),))
    finally:
        listener.close()  # the child has its own copy
    try:
        yield Served(f"http://{host}:{bound}/slack/events", child)
    finally:
        if child.poll() is None:
            child.terminate()  # gunicorn: graceful, in-flight requests finish
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
