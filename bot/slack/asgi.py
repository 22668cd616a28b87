"""HTTP mode's front for the worker processes: Bolt behind an ASGI callable, so a C HTTP
parser (httptools) on an event loop (uvloop) reads and writes the requests. gunicorn's own
threaded workers parse HTTP in Python: about a millisecond of every ack, and the GIL that
every other ack waits on. Same guards as the WSGI handler (`app.wsgi_app`): only
POST /slack/events, GET /healthz when given, and a body Bolt cannot parse is a 400.

Bolt runs in a few threads beside the loop (the ack's database transaction waits on a lock
or the network, and a health probe must not wait behind it)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_bolt.response import BoltResponse

from bot.slack.app import Health

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_BODY = 1024**2  # Slack's payloads are kilobytes; a bigger body is not Slack's


def asgi_app(
    app: App, health: Health | None = None, *, threads: int = 4
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    pool = ThreadPoolExecutor(threads, thread_name_prefix="bolt")

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the worker runs without lifespan events
            return
        path, method = scope.get("path"), scope.get("method")
        if health is not None and path == "/healthz":
            status, body = await asyncio.get_running_loop().run_in_executor(pool, health)
            code = int(status.split()[0])
            await _answer(send, code, json.dumps(body).encode(), "application/json")
            return
        if path != "/slack/events" or method != "POST":
            await _answer(send, 404, b"not found")
            return
        raw = await _body(receive)
        if raw is None:
            await _answer(send, 413, b"request too large")
            return
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(pool, _dispatch, app, raw, scope)
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        headers = [
            (name.encode(), value.encode())
            for name, values in answer.headers.items()
            if name.lower() != "content-length"
            for value in values
        ]
        await _send(send, answer.status, body, headers)

    return handle


def _dispatch(app: App, raw: bytes, scope: Scope) -> BoltResponse:
    headers: dict[str, list[str]] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    try:
        request = BoltRequest(
            body=raw.decode("utf-8"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
        )
        return app.dispatch(request)
    except Exception:  # Bolt parses before it verifies: a malformed body is the sender's
        log.info("refused a request Bolt could not parse", exc_info=True)
        return BoltResponse(status=400, body="malformed request")


async def _body(receive: Receive) -> bytes | None:
    """The request's body; None when it is over MAX_BODY (read to its end all the same, so
    the sender gets the 413 rather than a reset connection)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks) if size <= MAX_BODY else None


async def _answer(send: Send, status: int, body: bytes, kind: str = "text/plain") -> None:
    await _send(send, status, body, [(b"content-type", kind.encode())])


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
