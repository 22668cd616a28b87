"""Slack's side of Socket Mode over a real websocket.

apps.connections.open hands out a single-use URL (`ws://127.0.0.1:P/link/?ticket=…&app_id=…`);
a connection with any other ticket is refused with HTTP 401. On connect the server sends the
`hello` frame (socket_hello.json). Envelopes go to the newest open connection, as
`{"envelope_id", "payload", "type", "accepts_response_payload"}` (events also carry
`retry_attempt`/`retry_reason`); the app's acks (`{"envelope_id", "payload"?}`) are matched
to them. A `disconnect` frame (socket_disconnect.json) asks the app to reconnect."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from tests.slack_samples import load_json


@dataclass(frozen=True)
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None  # the response payload, when the app sent one
    at: float  # time.monotonic() on arrival


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    sent_at: float  # time.monotonic()
    connection_id: int
    ack: Ack | None = None
    _acked: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def ack_latency(self) -> float | None:
        """Seconds from sending the envelope to receiving its ack; None while unacked."""
        return None if self.ack is None else self.ack.at - self.sent_at

    def wait_ack(self, timeout: float = 3.0) -> Ack:
        if not self._acked.wait(timeout) or self.ack is None:
            raise TimeoutError(f"no ack for {self.type} envelope {self.envelope_id} in {timeout} s")
        return self.ack


@dataclass
class SocketConnection:
    id: int
    ticket: str
    opened_at: float
    closed_at: float | None = None
    frames: list[Any] = field(default_factory=list)  # inbound frames that were not acks
    ws: ServerConnection | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


class SocketModeServer:
    def __init__(self, *, app_id: str, changed: threading.Condition) -> None:
        self.app_id = app_id
        self._changed = changed  # notified on every connect, close, frame and ack
        self._tickets: set[str] = set()
        self.connections: list[SocketConnection] = []
        self.envelopes: dict[str, Envelope] = {}
        self._server = serve(
            self._serve_connection,
            "127.0.0.1",
            0,
            process_request=self._check_ticket,
            compression=None,
            close_timeout=0.5,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/link/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    def issue_url(self) -> str:
        """A fresh single-use URL, as apps.connections.open returns."""
        ticket = str(uuid.uuid4())
        with self._changed:
            self._tickets.add(ticket)
        return f"{self.url}?ticket={ticket}&app_id={self.app_id}"

    def send_envelope(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        timeout: float = 5.0,
        envelope_id: str | None = None,
    ) -> Envelope:
        """`envelope_id`: an earlier envelope's, to redeliver it as Slack does when it did not
        see the ack in time (the newer envelope takes its place in `envelopes`)."""
        connection = self.wait_connected(timeout=timeout)
        if accepts_response_payload is None:
            accepts_response_payload = kind == "slash_commands" or (
                payload.get("type") in ("view_submission", "block_suggestion")
            )
        frame: dict[str, Any] = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": kind,
            "accepts_response_payload": accepts_response_payload,
        }
        if kind == "events_api":
            frame.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
        envelope = Envelope(frame["envelope_id"], kind, payload, time.monotonic(), connection.id)
        with self._changed:
            self.envelopes[envelope.envelope_id] = envelope
        assert connection.ws is not None
        connection.ws.send(json.dumps(frame))
        return envelope

    def send_disconnect(self, reason: str | None = None) -> SocketConnection:
        """Ask the newest connection's app to reconnect; the connection stays open (the app
        closes it once it has a new one), as Slack does."""
        connection = self.wait_connected(timeout=5.0)
        frame = load_json("socket_disconnect.json")
        frame["connection_info"]["app_id"] = self.app_id
        if reason is not None:
            frame["reason"] = reason
        assert connection.ws is not None
        connection.ws.send(json.dumps(frame))
        return connection

    def close_connections(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every open connection from the server's side (the app should reconnect)."""
        with self._changed:
            sockets = [c.ws for c in self.connections if c.open and c.ws is not None]
        for ws in sockets:
            ws.close(code, reason)

    def wait_connected(self, *, total: int = 1, timeout: float = 5.0) -> SocketConnection:
        """The newest open connection, once `total` connections have opened (counting closed
        ones): `total=2` waits for a reconnect."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                live = [c for c in self.connections if c.open]
                if len(self.connections) >= total and live:
                    return live[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(live)} open Socket Mode connection(s), {len(self.connections)} "
                        f"ever; waited {timeout} s for {total} (did the app call "
                        "apps.connections.open and connect?)"
                    )
                self._changed.wait(left)

    def _check_ticket(self, ws: ServerConnection, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        ticket = (query.get("ticket") or [""])[0]
        with self._changed:
            if ticket not in self._tickets:
                return ws.respond(HTTPStatus.UNAUTHORIZED, "invalid or used ticket\n")
            self._tickets.discard(ticket)
        ws.ticket = ticket  # type: ignore[attr-defined]
        return None

    def _serve_connection(self, ws: ServerConnection) -> None:
        hello = load_json("socket_hello.json")
        hello["connection_info"]["app_id"] = self.app_id
        connection = SocketConnection(0, ws.ticket, time.monotonic(), ws=ws)  # type: ignore[attr-defined]
        try:
            with self._changed:  # hello goes out before any envelope can
                hello["num_connections"] = 1 + sum(c.open for c in self.connections)
                ws.send(json.dumps(hello))
                connection.id = len(self.connections) + 1
                self.connections.append(connection)
                self._changed.notify_all()
            for raw in ws:
                self._receive(connection, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                connection.closed_at = time.monotonic()
                self._changed.notify_all()

    def _receive(self, connection: SocketConnection, raw: str | bytes) -> None:
        at = time.monotonic()
        frame: Any = raw
        with contextlib.suppress(ValueError):
            frame = json.loads(raw)
        with self._changed:
            envelope = None
            if isinstance(frame, dict):
                envelope = self.envelopes.get(frame.get("envelope_id") or "")
            if envelope is None or envelope.ack is not None:
                connection.frames.append(frame)  # not an ack, or a second ack
            else:
                envelope.ack = Ack(envelope.envelope_id, frame.get("payload"), at)
                envelope._acked.set()
            self._changed.notify_all()
