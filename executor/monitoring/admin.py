"""The admin port of every long-running process: `/healthz` (the process is up and reaches
its database) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from sqlalchemy import Engine, text

from executor.monitoring import metrics
from storage.db import reading

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


def admin_app(engine: Engine | None, *, role: str) -> Callable[..., Iterable[bytes]]:
    """WSGI: `/healthz` answers 200 when the database answers (503 with the reason if not),
    `/metrics` the instruments and the queue; anything else 404."""
    prometheus = make_wsgi_app(metrics.registry(engine))

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)
        if path == "/healthz":
            status, body = health(engine, role)
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; try /healthz or /metrics\n"]

    return app


def health(engine: Engine | None, role: str) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"role": role, "status": "ok"}
    if engine is not None:
        try:
            with reading(engine) as session:
                session.connection().execute(text("select 1"))
        except Exception as exc:  # any failure to reach the database means unhealthy
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return "503 Service Unavailable", body | {"status": "unhealthy", "database": reason}
        body["database"] = "ok"
    return "200 OK", body


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape must not hold up a health probe


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


@contextmanager
def serve_admin(
    engine: Engine | None, *, role: str, host: str = "127.0.0.1", port: int = 9090
) -> Iterator[str]:
    """Serve the admin endpoints in a thread while the block runs; yields the base URL
    (port 0 picks a free port)."""
    server = make_server(host, port, admin_app(engine, role=role), _Server, _QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="admin", daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
