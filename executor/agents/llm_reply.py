"""A model's reply, and how to read one from an OpenAI-compatible chat completion, plain or
streamed (SSE).

Parsing is tolerant where servers differ (null content, missing usage, tool calls without
`id`, `arguments` sent as an object) and strict only where the reply is unusable: those
cases raise `BadReply`, which the client treats as a transient failure and retries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from executor.agents import untrusted_json


class BadReply(Exception):
    """The server answered, but not with a usable completion (an error chunk mid-stream,
    a stream cut short, a body that is not a completion)."""


class ErrorReply(BadReply):
    """The server said it failed (an error chunk or event, a 200 whose body is an error) or
    the stream was cut: the endpoint is in trouble, as with a 5xx."""


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for.

    `arguments` is None when `raw_arguments` is not a JSON object; `error` then says why, in
    words fit to send back to the model so it can correct itself."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    error: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class Reply:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    # How long the call waited for a failing endpoint before this reply (an outage's pause:
    # the agent's wall-time limit does not count it).
    waited_s: float = 0.0

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation for the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.raw_arguments},
                }
                for call in self.tool_calls
            ]
        return message


def parse_completion(body: Any) -> Reply:
    """A non-streamed `chat.completion` object."""
    _raise_on_error(body)
    choice = _first_choice(body)
    if choice is None:
        raise BadReply(f"reply has no choices: {excerpt(json.dumps(body))}")
    message = choice.get("message") or {}
    calls = [
        _tool_call(
            raw.get("id"),
            (raw.get("function") or {}).get("name"),
            (raw.get("function") or {}).get("arguments"),
        )
        for raw in message.get("tool_calls") or []
    ]
    return Reply(
        content=message.get("content") or None,
        tool_calls=calls,
        usage=_usage(body.get("usage")),
        finish_reason=choice.get("finish_reason"),
    )


def parse_stream(lines: Iterable[str]) -> Reply:
    """The lines of a `stream: true` response: `chat.completion.chunk` events up to
    `data: [DONE]`. Tool calls are assembled by their `index` across deltas."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage: Usage = Usage()
    finish_reason: str | None = None
    done = False
    for event, data in sse_events(lines):
        if data == "[DONE]":
            done = True
            break
        if event == "error":
            raise ErrorReply(f"error event mid-stream: {error_text(data)}")
        try:
            chunk = untrusted_json.loads(data)
        except ValueError:
            raise BadReply(f"chunk is not JSON: {excerpt(data)}") from None
        _raise_on_error(chunk)
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
        choice = _first_choice(chunk)
        if choice is None:  # the usage chunk has no choices
            continue
        delta = choice.get("delta") or {}
        if delta.get("content"):
            content.append(delta["content"])
        for raw in delta.get("tool_calls") or []:
            _merge_tool_call_delta(calls, raw)
        finish_reason = choice.get("finish_reason") or finish_reason
    # Without [DONE] or a finish reason the connection was cut: the reply may be partial.
    if not done and finish_reason is None:
        raise ErrorReply("stream ended before the reply was complete")
    return Reply(
        content="".join(content) or None,
        tool_calls=[
            _tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())
        ],
        usage=usage,
        finish_reason=finish_reason,
    )


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event type, data); comments (`: keep-alive`) are skipped."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a last event without the blank line that should end it
        yield event, "\n".join(data)


def excerpt(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _merge_tool_call_delta(calls: dict[int, dict[str, Any]], raw: dict[str, Any]) -> None:
    index = raw.get("index")
    if index is None:  # some servers omit it: a new id starts a new call
        known = {c["id"] for c in calls.values()}
        new = raw.get("id") and raw["id"] not in known
        index = len(calls) if new or not calls else max(calls)
    call = calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
    call["id"] = call["id"] or raw.get("id")
    function = raw.get("function") or {}
    call["name"] += function.get("name") or ""
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        call["arguments"] += arguments
    elif arguments is not None:  # an object, sent whole (Ollama, llama.cpp)
        call["arguments"] = arguments


def _tool_call(call_id: str | None, name: str | None, arguments: Any) -> ToolCall:
    # llama.cpp and Ollama may omit the id; the conversation still needs one to pair the
    # tool result with its call.
    call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
    name = name or ""
    if arguments is None or arguments == "":
        arguments = "{}"  # a function without parameters
    if not isinstance(arguments, str):
        raw = json.dumps(arguments)
        return _checked(call_id, name, raw, arguments)
    try:
        parsed = untrusted_json.loads(arguments)
    except ValueError as exc:
        error = f"arguments are not valid JSON: {exc}"
        return ToolCall(call_id, name, None, arguments, error)
    return _checked(call_id, name, arguments, parsed)


def _checked(call_id: str, name: str, raw: str, parsed: Any) -> ToolCall:
    if not isinstance(parsed, dict):
        error = f"arguments must be a JSON object, got {type(parsed).__name__}"
        return ToolCall(call_id, name, None, raw, error)
    return ToolCall(call_id, name, parsed, raw)


def _first_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choices = body.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else None


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _raise_on_error(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadReply(f"reply is not a JSON object: {excerpt(json.dumps(body))}")
    if body.get("error"):
        raise ErrorReply(f"error in reply: {error_text(body['error'])}")


def error_text(error: Any) -> str:
    """The message of an OpenAI-style error, whatever shape it came in."""
    if isinstance(error, str):
        try:
            error = untrusted_json.loads(error)
        except ValueError:
            return excerpt(error)
    if isinstance(error, dict) and "error" in error:
        error = error["error"]
    if isinstance(error, dict) and error.get("message"):
        return excerpt(str(error["message"]))
    return excerpt(error if isinstance(error, str) else json.dumps(error))
