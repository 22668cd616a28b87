"""A scripted OpenAI-compatible chat completions server for tests: real HTTP on 127.0.0.1.

Each request takes the next step of the script: a reply (content and/or tool calls) or a
fault (an error status, a hang, a dropped connection, an error mid-stream). Requests with
`stream: true` get realistic SSE: a role delta, content and tool-call argument deltas split
over several chunks (parallel calls interleaved by `index`), a `: keep-alive` comment, the
usage chunk when asked for, `data: [DONE]`. Every request body is recorded.

    with ScriptedLLM([reply(tool_call("bash", {"command": "ls"})), reply(content="done")]) as llm:
        client = LLMClient(base_url=llm.base_url, api_key=None, model="m")
        ...
        assert llm.requests[1]["messages"][-1]["role"] == "tool"

When the script runs out the server answers 500 "script exhausted", so a test that makes
more calls than it scripted fails loudly. `fail_for(seconds)` is an outage: every request in
that time gets a 500 without taking a step, and is counted in `failed_requests`."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

_ids = itertools.count(1)


class Step(Protocol):
    def serve(self, h: _Handler, request: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class ScriptedToolCall:
    name: str
    arguments: str | dict[str, Any]  # a str is sent verbatim: it may be broken JSON
    id: str | None  # None: omitted, as llama.cpp and Ollama may do
    as_object: bool = False  # send `arguments` as a JSON object, not a string

    def wire(self, index: int | None = None) -> dict[str, Any]:
        arguments: Any = self.arguments
        if isinstance(arguments, dict) and not self.as_object:
            arguments = json.dumps(arguments)
        call: dict[str, Any] = {"type": "function", "function": {"name": self.name}}
        call["function"]["arguments"] = arguments
        if index is not None:
            call["index"] = index
        if self.id is not None:
            call["id"] = self.id
        return call


@dataclass(frozen=True)
class ScriptedReply:
    content: str | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    usage: tuple[int, int] | None = (10, 5)  # (prompt, completion) tokens; None: omitted
    finish_reason: str | None = None

    @property
    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        if request.get("stream"):
            include_usage = (request.get("stream_options") or {}).get("include_usage")
            h.send_sse(self.chunks(h.chunk_base(request), bool(include_usage)))
            return
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.wire() for c in self.tool_calls]
        body = {
            **h.chunk_base(request),
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
        }
        if self.usage is not None:
            body["usage"] = _usage(self.usage)
        h.send_json(200, body)

    def serve_responses(self, h: _Handler, request: dict[str, Any]) -> None:
        """The same reply in the Responses API's event stream (`POST /v1/responses`, as Codex
        CLI speaks it): output items, text deltas, `response.completed` with usage."""
        n = len(h.llm.requests)
        output: list[dict[str, Any]] = []
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": {"id": f"resp_{n}", "status": "in_progress"}})
        ]
        if self.content:
            item_id = f"msg_{n}"
            events.append(
                (
                    "response.output_item.added",
                    {
                        "output_index": 0,
                        "item": {
                            "type": "message",
                            "id": item_id,
                            "role": "assistant",
                            "status": "in_progress",
                            "content": [],
                        },
                    },
                )
            )
            for piece in _split(self.content, 3):
                events.append(
                    (
                        "response.output_text.delta",
                        {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece},
                    )
                )
            text = {"type": "output_text", "text": self.content, "annotations": []}
            output.append(
                {
                    "type": "message",
                    "id": item_id,
                    "role": "assistant",
                    "status": "completed",
                    "content": [text],
                }
            )
        for i, call in enumerate(self.tool_calls):
            arguments = call.arguments
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{n}_{i}",
                    "call_id": call.id or f"call_{n}_{i}",
                    "name": call.name,
                    "arguments": arguments,
                    "status": "completed",
                }
            )
        for index, item in enumerate(output):
            events.append(("response.output_item.done", {"output_index": index, "item": item}))
        completed: dict[str, Any] = {"id": f"resp_{n}", "status": "completed", "output": output}
        if self.usage is not None:
            prompt, completion = self.usage
            completed["usage"] = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            }
        events.append(("response.completed", {"response": completed}))
        h.send_sse(
            f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}" for kind, data in events
        )

    def serve_messages(self, h: _Handler, request: dict[str, Any]) -> None:
        """The same reply in Anthropic's Messages API (`POST /v1/messages`, as Claude Code
        speaks it with ANTHROPIC_BASE_URL): text and tool_use blocks, streamed or whole."""
        n = len(h.llm.requests)
        blocks: list[dict[str, Any]] = []
        if self.content:
            blocks.append({"type": "text", "text": self.content})
        for i, call in enumerate(self.tool_calls):
            arguments = call.arguments
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id or f"toolu_{n}_{i}",
                    "name": call.name,
                    "input": arguments,
                }
            )
        prompt, completion = self.usage or (0, 0)
        stop = "tool_use" if self.tool_calls else "end_turn"
        message = {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", h.llm.model),
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
        if not request.get("stream"):
            h.send_json(200, {**message, "content": blocks})
            return
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "usage": {"input_tokens": prompt, "output_tokens": 1},
                    }
                },
            ),
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(
                    (
                        "content_block_start",
                        {"index": index, "content_block": {"type": "text", "text": ""}},
                    )
                )
                for piece in _split(block["text"], 3):
                    events.append(
                        (
                            "content_block_delta",
                            {"index": index, "delta": {"type": "text_delta", "text": piece}},
                        )
                    )
            else:
                start = {**block, "input": {}}
                events.append(("content_block_start", {"index": index, "content_block": start}))
                for piece in _split(json.dumps(block["input"]), 3):
                    events.append(
                        (
                            "content_block_delta",
                            {
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece},
                            },
                        )
                    )
            events.append(("content_block_stop", {"index": index}))
        events.append(
            (
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": completion},
                },
            )
        )
        events.append(("message_stop", {}))
        h.send_sse(
            f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}" for kind, data in events
        )

    def chunks(self, base: dict[str, Any], include_usage: bool) -> list[dict[str, Any] | str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**base, "choices": [choice]}

        out: list[dict[str, Any] | str] = [
            chunk({"role": "assistant", "content": "" if self.content else None}),
            ": keep-alive",
        ]
        if self.content:
            out += [chunk({"content": piece}) for piece in _split(self.content, 3)]
        # Parallel calls interleaved round-robin: the client must assemble by `index`.
        pieces = [
            [""] if c.as_object else _split(c.wire()["function"]["arguments"], 3)
            for c in self.tool_calls
        ]
        for turn in range(max(map(len, pieces), default=0)):
            for index, call in enumerate(self.tool_calls):
                if call.as_object and turn == 0:  # sent whole, as Ollama does
                    out.append(chunk({"tool_calls": [call.wire(index)]}))
                elif turn == 0:
                    head = call.wire(index)
                    head["function"]["arguments"] = pieces[index][0]
                    out.append(chunk({"tool_calls": [head]}))
                elif turn < len(pieces[index]) and not call.as_object:
                    delta = {"index": index, "function": {"arguments": pieces[index][turn]}}
                    out.append(chunk({"tool_calls": [delta]}))
        out.append(chunk({}, self.finish))
        if include_usage and self.usage is not None:
            out.append({**base, "choices": [], "usage": _usage(self.usage)})
        out.append("[DONE]")
        return out


@dataclass(frozen=True)
class Fault:
    """An error answer: `status` with `headers` and `body` (an OpenAI error by default)."""

    status: int = 500
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        body = self.body
        if body is None:
            body = json.dumps({"error": {"message": self.message, "type": "scripted"}})
        h.send_raw(self.status, body.encode(), "application/json", self.headers)


@dataclass(frozen=True)
class Hang:
    """Say nothing for `seconds` (the client should time out first), then hang up."""

    seconds: float

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        h.llm.stopping.wait(self.seconds)
        h.hang_up()


@dataclass(frozen=True)
class Slow:
    """Answer with `step` after `seconds`: a model that takes its time."""

    seconds: float
    step: Step

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        h.llm.stopping.wait(self.seconds)
        self.step.serve(h, request)


@dataclass(frozen=True)
class Drop:
    """Hang up: before answering at all, or `midway` through the body (or the stream)."""

    midway: bool = True

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        if self.midway and request.get("stream"):
            events = ScriptedReply(content="partial reply").chunks(h.chunk_base(request), True)
            h.send_sse(events[:3], complete=False)
        elif self.midway:
            body = b'{"id": "chatcmpl-cut", "choices": [{"index": 0, "message": {"content": "par'
            h.send_raw(200, body, "application/json", {"Content-Length": str(len(body) * 2)})
        h.hang_up()


@dataclass(frozen=True)
class Stall:
    """Start answering, then fall silent for `seconds` with the connection open: a streamed
    reply stops after a few chunks; a plain one sends its headers and half its body."""

    seconds: float

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        if request.get("stream"):
            events = ScriptedReply(content="partial reply").chunks(h.chunk_base(request), True)
            h.send_sse(events[:3], complete=False)
        else:
            body = b'{"id": "chatcmpl-stall", "choices": [{"index": 0, "message": {"con'
            h.send_raw(200, body, "application/json", {"Content-Length": str(len(body) * 2)})
        h.wfile.flush()
        h.llm.stopping.wait(self.seconds)
        h.hang_up()


@dataclass(frozen=True)
class Trickle:
    """A plain 200 whose body never ends: one space every `every` seconds (JSON allows
    leading whitespace), for `seconds`: only a total timeout cuts it."""

    seconds: float
    every: float = 0.2

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "1000000")
        h.end_headers()
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not h.llm.stopping.wait(self.every):
            h.wfile.write(b" ")
            h.wfile.flush()
        h.hang_up()


@dataclass(frozen=True)
class StreamError:
    """A 200 that fails inside: a `data: {"error": …}` chunk or an `event: error` after a
    little content. A plain request gets a 200 whose body is `{"error": …}`."""

    message: str = "upstream overloaded"
    as_event: bool = False

    def serve(self, h: _Handler, request: dict[str, Any]) -> None:
        error = {"error": {"message": self.message, "type": "server_error"}}
        if not request.get("stream"):
            h.send_json(200, error)
            return
        events = ScriptedReply(content="partial reply").chunks(h.chunk_base(request), True)[:3]
        if self.as_event:
            h.send_sse([*events, f"event: error\ndata: {json.dumps(error)}"])
        else:
            h.send_sse([*events, error])


def tool_call(
    name: str,
    arguments: str | dict[str, Any] | None = None,
    *,
    id: str | None = "",
    as_object: bool = False,
) -> ScriptedToolCall:
    """A tool call; `id=""` makes one up, `id=None` omits it; a str `arguments` is sent as is."""
    call_id = f"call_{next(_ids)}" if id == "" else id
    return ScriptedToolCall(name, {} if arguments is None else arguments, call_id, as_object)


def reply(
    *tool_calls: ScriptedToolCall,
    content: str | None = None,
    usage: tuple[int, int] | None = (10, 5),
    finish_reason: str | None = None,
) -> ScriptedReply:
    return ScriptedReply(content, tool_calls, usage, finish_reason)


def error(status: int, message: str = "scripted failure", **headers: str) -> Fault:
    """An error status; headers by keyword, underscores for dashes (`Retry_After="1"`)."""
    return Fault(status, message, {k.replace("_", "-"): v for k, v in headers.items()})


def rate_limited(retry_after: str | float | None = None) -> Fault:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Fault(429, "Rate limit reached, please retry", headers)


def hang(seconds: float) -> Hang:
    return Hang(seconds)


def slow(seconds: float, step: Step) -> Slow:
    return Slow(seconds, step)


def drop(*, midway: bool = True) -> Drop:
    return Drop(midway)


def stream_error(message: str = "upstream overloaded", *, as_event: bool = False) -> StreamError:
    return StreamError(message, as_event)


def stall(seconds: float) -> Stall:
    return Stall(seconds)


def trickle(seconds: float, every: float = 0.2) -> Trickle:
    return Trickle(seconds, every)


class ScriptedLLM:
    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        model: str = "scripted-model",
        background: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """`background`: requests it matches (an agent's side calls, e.g. Claude Code's warm-up
        and summaries, made concurrently in no fixed order) get a short reply and go to
        `side_requests`, outside the script."""
        self.model = model
        self.background = background
        self.side_requests: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # every request body, in order
        self.headers: list[dict[str, str]] = []  # their headers (lower-case names)
        self.received_at: list[float] = []  # their arrival times (time.time())
        # Requests answered by an outage (`fail_for`): (arrival time.time(), body).
        self.failed_requests: list[tuple[float, dict[str, Any]]] = []
        self._outage: tuple[float, int, str] | None = None  # until (time.time()), status, message
        self.stopping = threading.Event()
        self._script: deque[Step] = deque(script)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.llm = self  # type: ignore[attr-defined]
        # A short poll interval: shutdown() waits up to one interval, at every test's end.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def remaining(self) -> int:
        """Steps not yet used; 0 once the test made every call it scripted."""
        with self._lock:
            return len(self._script)

    def add(self, *steps: Step) -> None:
        with self._lock:
            self._script.extend(steps)

    def fail_for(
        self, seconds: float, status: int = 500, message: str = "scripted outage: the model is down"
    ) -> None:
        """An outage from now: for `seconds`, every request is answered `status` (an OpenAI
        error with `message`) without taking a step of the script (safe to call from a step,
        in the server's thread)."""
        with self._lock:
            self._outage = (time.time() + seconds, status, message)

    @property
    def outage_over(self) -> bool:
        with self._lock:
            return self._outage is None or time.time() >= self._outage[0]

    def start(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Step | None:
        if self.background is not None and self.background(body):
            with self._lock:
                self.side_requests.append(body)
            return ScriptedReply(content="ok", usage=(1, 1))
        with self._lock:
            if self._outage is not None and time.time() < self._outage[0]:
                self.failed_requests.append((time.time(), body))
                return Fault(self._outage[1], self._outage[2])
            self.requests.append(body)
            self.headers.append(headers)
            self.received_at.append(time.time())
            return self._script.popleft() if self._script else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked SSE, like real servers
    timeout = 30  # idle keep-alive connections go away
    server: ThreadingHTTPServer

    @property
    def llm(self) -> ScriptedLLM:
        return self.server.llm  # type: ignore[attr-defined,no-any-return]

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self.path.split("?")[0].rstrip("/")
        responses = route in ("/v1/responses", "/responses")
        messages = route in ("/v1/messages", "/messages")
        if not (responses or messages) and self.path.rstrip("/") not in (
            "/v1/chat/completions",
            "/chat/completions",
        ):
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        n = len(self.llm.requests) + 1
        step = self.llm._next(body, headers)
        if step is None:
            message = f"script exhausted: request #{n} has no scripted step"
            self.send_json(500, {"error": {"message": message, "type": "script_exhausted"}})
            return
        try:
            if responses and isinstance(step, ScriptedReply):
                step.serve_responses(self, body)
            elif messages and isinstance(step, ScriptedReply):
                step.serve_messages(self, body)
            else:
                step.serve(self, body)
        except OSError:  # the client gave up on us (timeout): nothing to answer
            self.close_connection = True

    def chunk_base(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{len(self.llm.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", self.llm.model),
        }

    def send_json(self, status: int, body: Any) -> None:
        self.send_raw(status, json.dumps(body).encode(), "application/json", {})

    def send_raw(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_sse(self, events: Iterable[dict[str, Any] | str], complete: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            if isinstance(event, dict):
                text = f"data: {json.dumps(event)}\n\n"
            elif event.startswith((":", "event:")):
                text = f"{event}\n\n"
            else:
                text = f"data: {event}\n\n"
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if complete:
            self.wfile.write(b"0\r\n\r\n")

    def hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # already gone
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not access logs


def _split(text: str, parts: int) -> list[str]:
    """`text` in `parts` roughly equal pieces (fewer if it is short; [""] if empty)."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
