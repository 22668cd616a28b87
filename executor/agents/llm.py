"""The OpenAI-compatible chat completions client the agent loop talks to.

One call, `LLMClient.complete(messages, tools, tool_choice) -> Reply`, plain or streamed
(SSE). A hung request is cut: streamed, after `idle_timeout` seconds without a byte; plain,
after `timeout` seconds in all. Failures that say the endpoint is away (408, 429, 5xx,
timeouts, refused or dropped connections, an error inside a 200) are an outage: the client's
gate (`executor/agents/gate.py`, shared by every worker thread of the process) lets one
request at a time probe the endpoint, with a growing backoff honouring `Retry-After`, and the
other calls wait for it instead of sending. A call waits so for up to `outage_window`
seconds, telling its `WaitListener` (the task's card), then gives up. Replies that are not
usable completions are retried a few times for that call only; other 4xx are not.

    LLMError
    ├── LLMUnavailable   the endpoint kept answering with unusable replies, or:
    │   └── ModelOutage  it kept failing for the outage window (or the attempts given ran out)
    └── LLMRejected      the endpoint refused the request (4xx): retrying would not help

Tool-call arguments that are not a JSON object do not raise: the `ToolCall` carries an
`error` for the agent loop to hand back to the model."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from executor.agents import untrusted_json
from executor.agents.gate import Gate, WindowOver
from executor.agents.llm_reply import (
    BadReply,
    ErrorReply,
    Reply,
    ToolCall,
    Usage,
    error_text,
    excerpt,
    parse_completion,
    parse_stream,
)
from executor.agents.outage import Backoff
from executor.config.defaults import (
    MODEL_BAD_REPLY_ATTEMPTS,
    MODEL_IDLE_TIMEOUT_S,
    MODEL_OUTAGE_WINDOW_S,
    MODEL_REQUEST_TIMEOUT_S,
    MODEL_WAIT_NOTICE_S,
    MODEL_WAIT_TICK_S,
)
from executor.config.redact import redact
from executor.monitoring import metrics
from storage.text import clean

__all__ = [
    "LLMClient",
    "LLMError",
    "LLMRejected",
    "LLMUnavailable",
    "ModelOutage",
    "ModelWait",
    "Reply",
    "ToolCall",
    "Usage",
    "WaitListener",
]

log = logging.getLogger(__name__)

# Where requests go when neither OPENAI_BASE_URL nor `base_url:` says otherwise.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = MODEL_REQUEST_TIMEOUT_S
# First backoff; it doubles per failed probe (less up to a quarter of jitter) up to `max_wait`.
DEFAULT_BACKOFF_S = 1.0
# Cap on any single wait, including a server's Retry-After: the endpoint is tried again at
# least this often during an outage.
DEFAULT_MAX_WAIT_S = 60.0
# Connecting is quick when the endpoint is there; a refused or silent connect is an outage.
CONNECT_TIMEOUT_S = 10.0

RETRYABLE_STATUS = frozenset({408, 429})


class LLMError(Exception):
    """The model could not be asked; the message says which endpoint and why."""


class LLMUnavailable(LLMError):
    """The endpoint kept failing (429, 5xx, timeouts, dropped connections, an error
    mid-stream) for the whole outage window, or kept sending unusable replies; the message
    says for how long and what happened."""


class ModelOutage(LLMUnavailable):
    """The endpoint stayed away (failures that say so, not unusable replies) until the call
    gave up: the task waits for a person, its work kept; the model may be back later."""


class LLMRejected(LLMError):
    """The endpoint refused the request with a 4xx (bad request, bad key, unknown model,
    context too long); the message carries the server's words. Not retried."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ModelWait:
    """A call waiting for a failing endpoint: what failed (no credentials in it), since when,
    and when it gives up (UTC)."""

    failure: str
    since: datetime
    until: datetime


class WaitListener(Protocol):
    """Told about one call's wait for the model (the task's card and log, its cancel)."""

    def waiting(self, wait: ModelWait) -> None:
        """Once, when the call has waited a moment (a blip retried at once is not news)."""

    def check(self) -> None:
        """Every second or so while the call waits; raise to stop waiting (a cancel)."""

    def over(self, answered: bool) -> None:
        """After `waiting`: the call ended; `answered` when the model is back."""


class _Transient(Exception):
    """One failed attempt worth retrying; `kind` is short ("HTTP 500", "timeout"). `outage`:
    it says the endpoint is away (else the endpoint answered, unusably)."""

    def __init__(
        self, kind: str, detail: str, retry_after: float | None = None, *, outage: bool = True
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retry_after, self.outage = kind, detail, retry_after, outage


class LLMClient:
    """`base_url` ends where `/chat/completions` goes (e.g. `https://api.openai.com/v1`);
    `api_key` None sends no Authorization (local servers). `timeout` bounds a plain request
    in all, `idle_timeout` the silence within a streamed one. `outage_window` is how long one
    call waits for a failing endpoint; `backoff` and `max_wait` shape the waits between probes;
    `max_attempts`, when given, also caps the attempts of one call (`nightcrew doctor`: 1).
    One client is shared by all the workers of a process: its gate is the process's view of
    the endpoint. `transport` swaps httpx's I/O, as httpx's own tests do."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float = MODEL_REQUEST_TIMEOUT_S,
        idle_timeout: float = MODEL_IDLE_TIMEOUT_S,
        outage_window: float = MODEL_OUTAGE_WINDOW_S,
        max_attempts: int | None = None,
        backoff: float = DEFAULT_BACKOFF_S,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        stream: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            shown = redact(base_url)
            raise ValueError(f"LLM base URL must start with http:// or https:// (got {shown!r})")
        self.base_url = base_url.rstrip("/")  # also what `network: [model]` allows
        self.url = self.base_url + "/chat/completions"
        self.shown = redact(self.url)  # in messages and logs: never a credential in the URL
        self.model = model
        self.stream = stream
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.outage_window = outage_window
        self.max_attempts = max_attempts
        self.backoff = Backoff(backoff, max_wait)
        self.gate = Gate(self.backoff)
        # Streamed: every read waits at most `idle_timeout` for the next bytes. Plain: the
        # answer comes when generation ends, so a read may wait the whole `timeout`; the body
        # is read against the same deadline (`_body`).
        limit = idle_timeout if stream else timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(limit, connect=min(limit, CONNECT_TIMEOUT_S)),
            transport=transport,
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] = "auto",
        *,
        options: dict[str, Any] | None = None,
        waiting: WaitListener | None = None,
    ) -> Reply:
        """One model turn. `options` go into the request as is (`max_tokens`, `temperature`);
        `waiting` hears about a wait for a failing endpoint and may stop it."""
        payload: dict[str, Any] = {"model": self.model, "messages": messages, **(options or {})}
        if tools:  # OpenAI rejects a tool_choice without tools
            payload["tools"] = tools
            payload["tool_choice"] = tool_choice
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        call = _Call(self, waiting)
        started, outcome = time.monotonic(), "unavailable"
        try:
            reply = self._attempts(payload, call)
            outcome = "ok"
            return reply
        except LLMRejected:
            outcome = "rejected"
            raise
        finally:
            call.close(answered=outcome != "unavailable")
            metrics.LLM_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def _attempts(self, payload: dict[str, Any], call: _Call) -> Reply:
        while True:
            try:
                probe = self.gate.enter(deadline=call.deadline, tick_s=call.tick_s, tick=call.tick)
            except WindowOver:
                raise self._give_up(call, window=True) from None
            try:
                reply = self._send(payload)
            except _Transient as exc:
                call.failures.append(exc)
                if exc.outage:
                    what = f"{exc.kind}: {redact(exc.detail)}"
                    self.gate.failed(what, probe=probe, retry_after=exc.retry_after)
                else:  # the endpoint answered; this says nothing about it for others
                    self.gate.abandoned(probe)
                self._log_failure(exc, probe)
                call.begin_waiting(exc)
                if self.max_attempts is not None and len(call.failures) >= self.max_attempts:
                    raise self._give_up(call) from None
                if not exc.outage:
                    bad = sum(1 for f in call.failures if not f.outage)
                    if bad >= MODEL_BAD_REPLY_ATTEMPTS:
                        raise self._give_up(call) from None
                    call.sleep(self.backoff.delay(bad - 1, exc.retry_after))
                elif time.monotonic() >= call.deadline():
                    raise self._give_up(call, window=True) from None
                continue
            except LLMRejected:
                self.gate.answered()  # a refusal: the endpoint is there
                raise
            except BaseException:
                self.gate.abandoned(probe)
                raise
            self.gate.answered()
            return replace(reply, waited_s=call.waited_s())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, payload: dict[str, Any]) -> Reply:
        deadline = time.monotonic() + self.timeout
        try:
            with self._http.stream("POST", self.url, json=payload) as response:
                self._check(response)
                if self.stream and "json" not in response.headers.get("Content-Type", ""):
                    return parse_stream(response.iter_lines())
                # Plain, or a server that ignored `stream`: one JSON body.
                return parse_completion(_json(self._body(response, deadline)))
        except httpx.TimeoutException as exc:
            if self.stream:
                said = f"no byte for {self.idle_timeout:g} s"
            else:
                said = f"no answer within {self.timeout:g} s"
            raise _Transient("timeout", f"{said} ({type(exc).__name__})") from exc
        except httpx.RequestError as exc:  # connection refused or dropped, bad encoding
            raise _Transient("connection error", f"{type(exc).__name__}: {exc}") from exc
        except ErrorReply as exc:
            raise _Transient("error reply", str(exc)) from exc
        except BadReply as exc:
            raise _Transient("bad reply", str(exc), outage=False) from exc
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # A body of the wrong shape (e.g. `"function": "bash"`): as unusable as garbage.
            detail = f"unexpected reply shape: {exc}"
            raise _Transient("bad reply", detail, outage=False) from exc

    def _body(self, response: httpx.Response, deadline: float) -> bytes:
        """The whole body, unless the request's time is up first (a server trickling bytes
        would never trip the read timeout): cut at the first chunk past the deadline."""
        chunks: list[bytes] = []
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the body was still coming when the time was up")
        return b"".join(chunks)

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        response.read()
        status = response.status_code
        message = _error_message(response)
        if status in RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Transient(f"HTTP {status}", message, retry_after)
        hint = " (is the API key right?)" if status in (401, 403) else ""
        raise LLMRejected(
            f"LLM endpoint {self.shown} rejected the request with HTTP {status}"
            f" {response.reason_phrase}{hint}: {message}",
            status,
        )

    def _log_failure(self, exc: _Transient, probe: bool) -> None:
        role = "probe" if probe else "request"
        then = "waiting for the endpoint" if exc.outage else "retrying"
        said = clean(redact(str(exc)))  # the server's words: no terminal escapes in our log
        log.warning("LLM %s: %s failed: %s; %s", self.shown, role, said, then)

    def _give_up(self, call: _Call, *, window: bool = False) -> LLMUnavailable:
        failures = call.failures
        kinds = [f.kind for f in failures]
        if not kinds:
            what = f"another request's {self.gate.last_failure or 'failure'}"
        elif len(set(kinds)) == 1:
            what = f"{kinds[0]} {len(kinds)} times"
        else:
            what = f"{len(kinds)} times ({', '.join(_distinct(kinds))})"
        last = redact(failures[-1].detail) if failures else ""  # an httpx error may quote it
        last = f"; last: {last}" if last else ""
        if window:
            return ModelOutage(
                f"LLM endpoint {self.shown} kept failing for {_duration(call.waited_s())}"
                f" (outage window {_duration(self.outage_window)}): {what}{last}"
            )
        kind = ModelOutage if failures and failures[-1].outage else LLMUnavailable
        return kind(f"LLM endpoint {self.shown} failed: {what}{last}")


@dataclass
class _Call:
    """One `complete` call's side of a wait: its failures, its window, its listener."""

    client: LLMClient
    listener: WaitListener | None
    failures: list[_Transient] = field(default_factory=list)
    tick_s: float = MODEL_WAIT_TICK_S
    _since: float | None = None  # monotonic: when this call began to wait
    _since_wall: datetime | None = None
    _told: bool = False

    def begin_waiting(self, failure: _Transient | None = None) -> None:
        if self._since is None:
            self._since, self._since_wall = time.monotonic(), datetime.now(UTC)
            metrics.LLM_WAITING.inc()

    def deadline(self) -> float:
        """Read by the gate while this call waits: its first wait starts the window."""
        self.begin_waiting()
        assert self._since is not None
        return self._since + self.client.outage_window

    def waited_s(self) -> float:
        return 0.0 if self._since is None else time.monotonic() - self._since

    def tick(self) -> None:
        if self.listener is None:
            return
        if not self._told and self.waited_s() >= MODEL_WAIT_NOTICE_S:
            assert self._since_wall is not None
            failure = (
                f"{self.failures[-1].kind}: {redact(self.failures[-1].detail)}"
                if self.failures
                else self.client.gate.last_failure
            )
            until = self._since_wall + timedelta(seconds=self.client.outage_window)
            self._told = True
            self.listener.waiting(ModelWait(failure, self._since_wall, until))
        self.listener.check()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self.tick_s))
            self.tick()

    def close(self, *, answered: bool) -> None:
        if self._since is not None:
            metrics.LLM_WAITING.dec()
        if self._told and self.listener is not None:
            self.listener.over(answered)


def _distinct(kinds: list[str]) -> Iterator[str]:
    return iter(dict.fromkeys(kinds))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json(body: bytes) -> Any:
    try:
        return untrusted_json.loads(body)
    except ValueError:
        raise BadReply(f"body is not JSON: {excerpt(body.decode(errors='replace'))}") from None


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's `{"error": {"message": …}}`, else the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return error_text(body["error"])
    return excerpt(response.text) or "(empty body)"
