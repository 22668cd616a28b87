"""The egress allowlist (`network: [host:port, ..., model]`): the sandbox has no network at
all (Docker's `none`: only its own loopback), and nightcrew puts one listening socket into
it, 127.0.0.1:3128 inside the sandbox, that belongs to a proxy running here on the host. The
proxy speaks HTTP CONNECT and plain HTTP (absolute-form requests) and connects only to the
allowed host:port pairs, from the host's network. The agent is pointed at it by
HTTPS_PROXY/HTTP_PROXY.

Why not a Docker `--internal` network: its bridge gives the host an address the sandbox can
reach, so every service of the host listening on 0.0.0.0 would be one connect() away. Here
there is no interface but loopback: a direct connection, a DNS lookup or another port has
nowhere to go. The socket is made by entering the container's network namespace on one
thread (setns(2), root on the host); a socket keeps the namespace it was made in.

Every refused request is counted per (host, port); the task's job drains the counts into the
task log (`egress_refused` events) and the card shows them as a warning."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PROXY_PORT = 3128  # inside the sandbox, on its loopback
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
CLONE_NEWNET = 0x40000000
MAX_HEAD = 64 * 1024  # a request line and headers; more is not a request we forward
MAX_CONNECTIONS = 64  # at once per sandbox: a flood of connects must not eat the host's threads
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 600.0  # a tunnel silent this long is closed (a streaming model answer is not)


class EgressError(Exception):
    """The proxy cannot be placed into the sandbox (not root, no such process)."""


def proxy_env() -> dict[str, str]:
    """The container's environment that points every common client at the proxy. NO_PROXY is
    empty on purpose: nothing is reachable directly, the sandbox's own loopback aside."""
    env = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = PROXY_URL
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def destination(url: str) -> str:
    """`https://api.openai.com/v1` → `api.openai.com:443` (the `model` shortcut)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"not a URL with a host: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host.lower()}:{port}"


def allowlist(entries: Iterable[str], model_url: str | None) -> tuple[str, ...]:
    """The config's list with `model` replaced by the model endpoint's host:port."""
    out: list[str] = []
    for entry in entries:
        if entry == "model":
            if model_url is None:
                raise ValueError("network: model, but no model endpoint is configured")
            entry = destination(model_url)
        if entry not in out:
            out.append(entry)
    return tuple(out)


def split_target(text: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` → (host as written, lower case, port); None if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.lower(), int(port)


@dataclass
class EgressProxy:
    """One sandbox's proxy: `attach(pid)` after each (re)start of its container."""

    allowed: tuple[str, ...]
    _refused: Counter[tuple[str, int]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listeners: list[socket.socket] = field(default_factory=list)
    _slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CONNECTIONS)
    )
    _closed: bool = False

    def attach(self, pid: int) -> None:
        """Listen on 127.0.0.1:PROXY_PORT inside the network namespace of process `pid` (the
        container's init). A restarted container has a new namespace: attach again."""
        listener = _listen_in(pid)
        with self._lock:
            if self._closed:
                listener.close()
                return
            self._listeners.append(listener)
        threading.Thread(
            target=self._accept, args=(listener,), daemon=True, name="egress-accept"
        ).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def take_refusals(self) -> list[dict[str, object]]:
        """The refusals since the last call: host, port, count."""
        with self._lock:
            refused, self._refused = self._refused, Counter()
        return [{"host": h, "port": p, "count": n} for (h, p), n in sorted(refused.items())]

    def allows(self, host: str, port: int) -> bool:
        return f"{host.lower()}:{port}" in self.allowed

    def _refuse(self, host: str, port: int) -> None:
        with self._lock:
            self._refused[(host[:253], port)] += 1

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()
                self._refuse("(too many connections)", 0)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CONNECT_TIMEOUT_S)
            self._handle(conn)
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()

    def _handle(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        if head is None:
            return
        request_line, _, headers = head.partition(b"\r\n")
        parts = request_line.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            _answer(conn, 400, "not an HTTP proxy request")
            return
        method, target, version = parts
        if method == "CONNECT":
            found = split_target(target)
            origin = b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                _answer(conn, 400, "a proxy request needs an absolute http:// URL")
                return
            found = (url.hostname.lower(), url.port or 80)
            query = f"?{url.query}" if url.query else ""
            origin = ((url.path or "/") + query).encode("latin-1")
        if found is None:
            _answer(conn, 400, f"bad target {target[:200]!r}")
            return
        host, port = found
        if not self.allows(host, port):
            self._refuse(host, port)
            _answer(conn, 403, f"nightcrew: {host}:{port} is not in this repo's network allowlist")
            return
        try:
            upstream = socket.create_connection((host.strip("[]"), port), CONNECT_TIMEOUT_S)
        except OSError as exc:
            _answer(conn, 502, f"nightcrew: cannot reach {host}:{port}: {exc}")
            return
        with upstream:
            if method == "CONNECT":
                conn.sendall(f"{version} 200 Connection established\r\n\r\n".encode())
            else:
                kept = [
                    line
                    for line in headers.split(b"\r\n")
                    if line and not line.lower().startswith((b"proxy-", b"connection:"))
                ]
                upstream.sendall(
                    b" ".join([method.encode(), origin, version.encode()])
                    + b"\r\n"
                    + b"".join(line + b"\r\n" for line in kept)
                    + b"Connection: close\r\n\r\n"
                    + rest
                )
                rest = b""
            if rest:
                upstream.sendall(rest)
            _pipe(conn, upstream)


def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None, b""
        chunk = conn.recv(8192)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        return None, b""
    return head, rest


def _answer(conn: socket.socket, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (text + "\n").encode()
    conn.sendall(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes (the other direction on a thread)."""
    a.settimeout(IDLE_TIMEOUT_S)
    b.settimeout(IDLE_TIMEOUT_S)

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join(IDLE_TIMEOUT_S)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _listen_in(pid: int) -> socket.socket:
    """A listening socket on 127.0.0.1:PROXY_PORT in `pid`'s network namespace, made on a
    thread of its own so no other thread ever runs in the sandbox's namespace."""
    made: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as exc:
            made.append(exc)
            return
        try:
            _setns(target)
            try:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", PROXY_PORT))
                listener.listen(128)
                made.append(listener)
            finally:
                _setns(home)  # must not fail; if it did, this thread ends here anyway
        except BaseException as exc:  # handed to the caller
            made.append(exc)
        finally:
            os.close(home)
            os.close(target)

    thread = threading.Thread(target=work, name="egress-setns")
    thread.start()
    thread.join()
    result = made[0] if made else EgressError("no result")
    if isinstance(result, BaseException):
        raise EgressError(f"cannot place the egress proxy into the sandbox: {result}")
    return result
