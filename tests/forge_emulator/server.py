"""The transport and the faults both emulators share: a threaded HTTP server, JSON in and
out, ETags and 304s on GETs, rate-limit storms, 5xx bursts, token checks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    status: int
    headers: dict[str, str]


@dataclass
class Forged:
    """An answer: status, JSON body, headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class Route:
    def __init__(self, method: str, pattern: str, handler: Any) -> None:
        self.method, self.regex, self.handler = method, re.compile(pattern + r"$"), handler


class ForgeServer:
    """Subclasses add routes and state; this class moves bytes and injects faults."""

    auth_header = "Authorization"

    def __init__(self, bare: Path, *, project: str, token: str) -> None:
        self.bare, self.project, self.token = bare, project, token
        self.lock = threading.RLock()
        self.requests: list[Seen] = []
        self.routes: list[Route] = []
        self._storm: list[str] = []
        self._errors = 0
        self.echo_token = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.forge = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ForgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, pattern: str, handler: Any) -> None:
        self.routes.append(Route(method, pattern, handler))

    # --- faults --------------------------------------------------------------------------

    def rate_limit_storm(self, n: int, kind: str = "reset") -> None:
        """The next `n` requests are refused as rate limited: `reset` = 403 with
        X-RateLimit-Remaining 0 and a reset a second away; `retry-after` = 429 with
        Retry-After: 1."""
        with self.lock:
            self._storm += [kind] * n

    def server_errors(self, n: int) -> None:
        with self.lock:
            self._errors += n

    def heal(self) -> None:
        """No more faults queued."""
        with self.lock:
            self._errors, self._storm = 0, []

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for r in self.requests if r.method == method and re.search(pattern, r.path))

    # --- dispatch ------------------------------------------------------------------------

    def authorized(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def handle(self, method: str, target: str, headers: dict[str, str], body: Any) -> Forged:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        with self.lock:
            if self._storm:
                kind = self._storm.pop(0)
                if kind == "retry-after":
                    return Forged(429, {"message": "Too Many Requests"}, {"Retry-After": "1"})
                reset = str(int(time.time()) + 1)
                return Forged(
                    403,
                    {"message": "API rate limit exceeded"},
                    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
                )
            if self._errors:
                self._errors -= 1
                return Forged(502, {"message": "Bad Gateway"})
        if not self.authorized(headers):
            said = f" (sent {headers.get(self.auth_header, '')})" if self.echo_token else ""
            return Forged(401, {"message": f"Bad credentials{said}"})
        for route in self.routes:
            found = route.regex.match(parts.path)
            if found and route.method == method:
                with self.lock:
                    answer: Forged = route.handler(
                        query=query, body=body or {}, **found.groupdict()
                    )
                if self.echo_token and answer.status >= 400 and isinstance(answer.body, dict):
                    answer.body["message"] = (
                        f"{answer.body.get('message')} (request had "
                        f"{self.auth_header}: {headers.get(self.auth_header, '')})"
                    )
                return answer
        return Forged(404, {"message": "Not Found"})

    # --- git on the bare remote -----------------------------------------------------------

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=self.bare,
            check=True,
            capture_output=True,
            text=True,
            env={
                "GIT_AUTHOR_NAME": "Forge",
                "GIT_AUTHOR_EMAIL": "forge@example.com",
                "GIT_COMMITTER_NAME": "Forge",
                "GIT_COMMITTER_EMAIL": "forge@example.com",
                "PATH": "/usr/bin:/bin:/usr/local/bin",
            },
        ).stdout.strip()

    def head_of(self, branch: str) -> str:
        try:
            return self.git("rev-parse", "--verify", "-q", f"refs/heads/{branch}")
        except subprocess.CalledProcessError:
            return ""

    def merge_into(self, base: str, head_sha: str, *, method: str, title: str) -> str | None:
        """Merge `head_sha` into `base` for real; None on conflicts."""
        base_sha = self.head_of(base)
        result = subprocess.run(
            ["git", "merge-tree", "--write-tree", base_sha, head_sha],
            cwd=self.bare,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return None
        tree = result.stdout.split()[0]
        parents = ["-p", base_sha] + ([] if method in ("squash", "rebase") else ["-p", head_sha])
        new = self.git("commit-tree", tree, *parents, "-m", title)
        self.git("update-ref", f"refs/heads/{base}", new, base_sha)
        return new


def etag_of(body: Any) -> str:
    return '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        forge: ForgeServer = self.server.forge  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k: v for k, v in self.headers.items()}
        answer = forge.handle(self.command, self.path, headers, body)
        extra = dict(answer.headers)
        status = answer.status
        if self.command == "GET" and status == 200:
            tag = etag_of(answer.body)
            extra["ETag"] = tag
            if self.headers.get("If-None-Match") == tag:
                status = 304
        forge.requests.append(Seen(self.command, urlsplit(self.path).path, status, headers))
        payload = b"" if status == 304 else json.dumps(answer.body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
