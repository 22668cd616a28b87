"""The web front end as a WSGI app, and the thread that serves it beside the bot.

Routes, all GET, all read-only, every one behind a signed link (bot/links.py):
- `/t/<id>?u&e&s`: one task's page;
- `/t/<id>/poll?u&e&s&after=<event id>`: what changed since (the page's live updates);
- `/t/<id>/file/<n>?u&e&s&d=<diff event id>`: file n of that task's diff as highlighted
  rows (a big diff's page comes plain past its first ~200 lines and fetches these);
- `/p/<id>?u&e&s`: one plan's page: its tasks with their states and links, and the
  dependency graph (an inline SVG);
- `/review?u&e&s`: the person's review queue, riskiest first (bot/review.py).
A link that does not verify gets 403 and a page that names no task. Pages tell browsers not
to cache them, send no referrer (the link is in the address) and allow no script but our
own inline one (Content-Security-Policy with a per-response nonce)."""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy import Engine, func
from sqlmodel import col, select

from bot import review
from bot.links import Grant, Signer
from bot.web import diffview, pages
from executor.costs.pricing import cost_text
from storage.db import reading
from storage.models import Task, TaskEvent

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
# Who may see a task on the review page: for the link's user, whether they may decide on a
# task (the composition root passes Slack's rule; "local:" users are the host's own).
MayDecide = Callable[[str], Callable[[Task], bool]]
_PLAN = re.compile(r"^/p/([1-9][0-9]{0,17})$")
_TASK = re.compile(r"^/t/([1-9][0-9]{0,17})(/poll|/file/([0-9]{1,5}))?$")


def _headers(content_type: str, nonce: str | None = None) -> list[tuple[str, str]]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        (
            "Content-Security-Policy",
            f"default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; "
            f"script-src {script}; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'",
        ),
    ]


def web_app(
    engine: Engine, signer: Signer, *, may_decide: MayDecide | None = None
) -> Callable[..., Iterable[bytes]]:
    def forbidden(start_response: StartResponse) -> list[bytes]:
        start_response("403 Forbidden", _headers("text/html; charset=utf-8"))
        return [pages.forbidden_page().encode()]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"read-only\n"]
        raw = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=10)
        params = {k: v[0] for k, v in raw.items() if v}
        if path in ("/review", "/review/"):
            grant = signer.verify("review", params)
            if grant is None:
                return forbidden(start_response)
            return _review(grant.user, start_response)
        plan = _PLAN.match(path)
        if plan is not None:
            grant = signer.verify(f"plan:{plan[1]}", params)
            if grant is None:
                return forbidden(start_response)
            return _plan(int(plan[1]), grant, start_response)
        match = _TASK.match(path)
        if match is None:
            start_response("404 Not Found", _headers("text/plain"))
            return [b"not found\n"]
        task_id = int(match[1])
        grant = signer.verify(f"task:{task_id}", params)
        if grant is None:
            return forbidden(start_response)
        query = "&".join(f"{k}={params[k]}" for k in ("u", "e", "s"))
        if match[3] is not None:
            return _file(task_id, params.get("d", ""), int(match[3]), start_response)
        if match[2]:
            return _poll(task_id, params.get("after", "0"), start_response)
        return _task(task_id, query, start_response)

    def _task(task_id: int, query: str, start_response: StartResponse) -> list[bytes]:
        with reading(engine) as session:
            view = pages.load_task(session, task_id)
            if view is None:
                start_response("404 Not Found", _headers("text/plain"))
                return [b"no such task\n"]
            # Only a live page (its updates) or one with plain files (their highlighting) has
            # a script; a small parked one runs none at all.
            nonce = secrets.token_urlsafe(16) if view.live or view.pending else None
            body = pages.task_page(view, query=query)
            if nonce:
                body = body.replace("<script>", f'<script nonce="{nonce}">')
        start_response("200 OK", _headers("text/html; charset=utf-8", nonce))
        return [body.encode()]

    def _poll(task_id: int, after: str, start_response: StartResponse) -> list[bytes]:
        since = int(after) if after.isdigit() and len(after) < 19 else 0
        with reading(engine) as session:
            view = pages.load_task(session, task_id)
            if view is None:
                start_response("404 Not Found", _headers("text/plain"))
                return [b"no such task\n"]
            new = [e for e in view.events if (e.id or 0) > since]
            t = view.task
            body = {
                "state": pages.State(t.state).value,
                "live": view.live,
                "last": view.last_event_id,
                "html": pages.log_entries(new) if new else "",
                "turns": t.turns,
                "tokens": f"{t.tokens_in:,} in · {t.tokens_out:,} out",
                "cost": cost_text(t.cost_nanos, t.unpriced_tokens),
            }
        start_response("200 OK", _headers("application/json"))
        return [json.dumps(body).encode()]

    def _file(task_id: int, event: str, index: int, start_response: StartResponse) -> list[bytes]:
        html = None
        if event.isdigit() and len(event) < 19:
            with reading(engine) as session:
                html = pages.diff_file(session, task_id, int(event), index)
        if html is None:
            start_response("404 Not Found", _headers("text/plain"))
            return [b"no such file\n"]
        start_response("200 OK", _headers("text/html; charset=utf-8"))
        return [html.encode()]

    def _plan(plan_id: int, grant: Grant, start_response: StartResponse) -> list[bytes]:
        with reading(engine) as session:
            view = pages.load_plan(
                session, plan_id, signer=signer, user=grant.user, expires=grant.expires
            )
            if view is None:
                start_response("404 Not Found", _headers("text/plain"))
                return [b"no such plan\n"]
            body = pages.plan_page(view)
        start_response("200 OK", _headers("text/html; charset=utf-8"))
        return [body.encode()]

    def _review(user: str, start_response: StartResponse) -> list[bytes]:
        with reading(engine) as session:
            entries = review.waiting(session, may_decide=may_decide(user) if may_decide else None)
            body = pages.review_page(entries, signer=signer, user=user)
        start_response("200 OK", _headers("text/html; charset=utf-8"))
        return [body.encode()]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class Warmer:
    """Highlights each new diff as soon as it is recorded (a task parked), off any request:
    Pygments takes about half a second for 5,000 lines of Python, so the first person to
    open the page would otherwise wait for it. Polls for `diff` events newer than the last
    one it saw; a process that starts warms only what comes after."""

    def __init__(self, engine: Engine, every_s: float = 2.0) -> None:
        self.engine, self.every_s = engine, every_s
        self.stop = threading.Event()
        self.seen: int | None = None

    def run(self) -> None:
        try:
            pages.prepare()
        except Exception:  # only a head start: the first page does it otherwise
            log.warning("preparing the page templates failed", exc_info=True)
        while not self.stop.wait(self.every_s):
            try:
                self.tick()
            except Exception:  # a database hiccup must not end warming for good
                log.warning("warming new diffs failed; trying again", exc_info=True)

    def tick(self) -> int:
        with reading(self.engine) as session:
            newest = session.exec(select(func.max(TaskEvent.id))).one() or 0
            if self.seen is None:
                self.seen = newest
                return 0
            rows = session.exec(
                select(TaskEvent)
                .where(TaskEvent.kind == "diff", col(TaskEvent.id) > self.seen)
                .order_by(col(TaskEvent.id))
            ).all()
            self.seen = newest
            for event in rows:
                text = str(event.payload.get("diff") or "")
                diffview.parse_cached(diffview.key_of(event.id or 0, text), text)
        return len(rows)


@contextmanager
def serve_web(
    engine: Engine,
    signer: Signer,
    *,
    host: str = "127.0.0.1",
    port: int = 8780,
    may_decide: MayDecide | None = None,
    secrets: Iterable[str | None] = (),
) -> Iterator[str]:
    """Serve the pages from a thread while the block runs; yields the local base URL.
    `secrets`: values no page may show (the installation's keys and tokens)."""
    pages.keep_secrets(secrets)
    application = web_app(engine, signer, may_decide=may_decide)
    server = make_server(host, port, application, _Server, _QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="web", daemon=True
    )
    thread.start()
    warmer = Warmer(engine)
    warming = threading.Thread(target=warmer.run, name="web-warm", daemon=True)
    warming.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        warmer.stop.set()
        server.shutdown()
        server.server_close()
        warming.join(timeout=5)
