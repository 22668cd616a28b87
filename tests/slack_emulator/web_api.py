"""The Web API's transport: real HTTP on 127.0.0.1, `POST|GET /api/<method>` with a form,
JSON or query-string body and `Authorization: Bearer <token>` (or a `token` field), as
Slack accepts them; plus `POST /hooks/…` for response_url posts. What to answer is the
emulator's business (`SlackEmulator.handle_api`); this module only moves bytes."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from tests.slack_emulator.emulator import SlackEmulator

JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False  # close the connection without answering

    @classmethod
    def json(cls, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
        return cls(200, json.dumps(body).encode(), JSON_TYPE, headers or {})


class WebAPIServer:
    def __init__(self, slack: SlackEmulator) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.slack = slack  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: ThreadingHTTPServer

    @property
    def slack(self) -> SlackEmulator:
        return self.server.slack  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            self._api(url.path.removeprefix("/api/").strip("/"), url.query, raw)
        elif url.path.startswith("/upload/v1/") and self.command == "POST":
            ctype = self.headers.get("Content-Type") or ""
            token = url.path.removeprefix("/upload/v1/")
            status, body = self.slack.receive_upload(token, raw, ctype)
            self._send(Reply(status, body, "text/plain"))
        elif url.path.startswith("/files-pri/") and self.command == "GET":
            self._send(self.slack.serve_file(url.path, self.headers.get("Authorization") or ""))
        elif url.path.startswith("/hooks/") and self.command == "POST":
            self._response_url(raw)
        else:
            self._send(Reply(404, b"not found\n", "text/plain"))

    def _api(self, method: str, query: str, raw: bytes) -> None:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json" and raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(Reply.json({"ok": False, "error": "invalid_json"}))
                return
            params.update(body if isinstance(body, dict) else {})
        elif raw and ctype in ("", "application/x-www-form-urlencoded"):
            params.update(parse_qsl(raw.decode(), keep_blank_values=True))
        elif raw:
            self._send(Reply.json({"ok": False, "error": "invalid_form_data"}))
            return
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        body_token = params.pop("token", None)
        self._send(self.slack.handle_api(method, params, token or body_token))

    def _response_url(self, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(Reply(400, b"invalid_payload", "text/html"))
            return
        self.slack.record_response(f"{self.slack.http_url}{self.path}", body)
        self._send(Reply(200, b"ok", "text/html"))

    def _send(self, reply: Reply) -> None:
        if reply.hang_up:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):  # the app may be gone (killed while we held it)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
