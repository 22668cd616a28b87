"""The OpenAI-compatible chat completions client the agent loop talks to.

One call, `LLMClient.complete(messages, tools, tool_choice) -> Reply`, plain or streamed
(SSE). Transient failures (429, 408, 5xx, timeouts, dropped connections, an error mid-stream)
are retried with backoff, honouring `Retry-After`; other 4xx are not. Exceptions:

    LLMError
    ├── LLMUnavailable   the endpoint kept failing (all attempts used) or cannot be reached
    └── LLMRejected      the endpoint refused the request (4xx): retrying would not help

Tool-call arguments that are not a JSON object do not raise: the `ToolCall` carries an
`error` for the agent loop to hand back to the model."""

from __future__ import annotations

import email.utils
import json
import logging
import time
from datetime import UTC
from typing import Any, NoReturn

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from executor.agents.llm_reply import (
    BadReply,
    Reply,
    ToolCall,
    Usage,
    error_text,
    excerpt,
    parse_completion,
    parse_stream,
)
from executor.config.redact import redact
from executor.monitoring import metrics

__all__ = [
    "LLMClient",
    "LLMError",
    "LLMRejected",
    "LLMUnavailable",
    "Reply",
    "ToolCall",
    "Usage",
]

log = logging.getLogger(__name__)

# Where requests go when neither OPENAI_BASE_URL nor `base_url:` says otherwise.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A non-streamed reply arrives only when generation ends; slow local models need minutes.
DEFAULT_TIMEOUT_S = 180.0
# Enough to ride out a rate-limit window or a server restart, few enough to fail in minutes.
DEFAULT_MAX_ATTEMPTS = 5
# First backoff; it doubles per attempt (with jitter) up to `max_wait`.
DEFAULT_BACKOFF_S = 1.0
# Cap on any single wait, including a server's Retry-After: a task should not stall an hour.
DEFAULT_MAX_WAIT_S = 60.0

RETRYABLE_STATUS = frozenset({408, 429})


class LLMError(Exception):
    """The model could not be asked; the message says which endpoint and why."""


class LLMUnavailable(LLMError):
    """Every attempt failed transiently (429, 5xx, timeout, dropped connection, an error
    mid-stream) or the endpoint cannot be reached; the message lists what happened."""


class LLMRejected(LLMError):
    """The endpoint refused the request with a 4xx (bad request, bad key, unknown model,
    context too long); the message carries the server's words. Not retried."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class _Transient(Exception):
    """One failed attempt worth retrying; `kind` is short ("HTTP 500", "timeout")."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


class LLMClient:
    """`base_url` ends where `/chat/completions` goes (e.g. `https://api.openai.com/v1`);
    `api_key` None sends no Authorization (local servers). `timeout` bounds each wait for
    bytes (so a streamed reply may take longer in all); `backoff` and `max_wait` shape the
    waits between `max_attempts`. `transport` swaps httpx's I/O, as httpx's own tests do."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
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
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self._backoff = wait_exponential_jitter(multiplier=backoff, max=max_wait, jitter=backoff)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] = "auto",
        *,
        options: dict[str, Any] | None = None,
    ) -> Reply:
        """One model turn. `options` go into the request as is (`max_tokens`, `temperature`)."""
        payload: dict[str, Any] = {"model": self.model, "messages": messages, **(options or {})}
        if tools:  # OpenAI rejects a tool_choice without tools
            payload["tools"] = tools
            payload["tool_choice"] = tool_choice
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        failures: list[_Transient] = []
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._log_retry,
            retry_error_callback=lambda _: self._give_up(failures),
        )
        started, outcome = time.monotonic(), "unavailable"
        try:
            reply = retrying(self._attempt, payload, failures)
            outcome = "ok"
            return reply
        except LLMRejected:
            outcome = "rejected"
            raise
        finally:
            metrics.LLM_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _attempt(self, payload: dict[str, Any], failures: list[_Transient]) -> Reply:
        try:
            return self._send(payload)
        except _Transient as exc:
            failures.append(exc)
            raise

    def _send(self, payload: dict[str, Any]) -> Reply:
        try:
            if self.stream:
                with self._http.stream("POST", self.url, json=payload) as response:
                    self._check(response)
                    if "json" in response.headers.get("Content-Type", ""):  # stream ignored
                        return parse_completion(_json(response.read()))
                    return parse_stream(response.iter_lines())
            response = self._http.post(self.url, json=payload)
            self._check(response)
            return parse_completion(_json(response.content))
        except httpx.TimeoutException as exc:
            raise _Transient("timeout", f"no answer within {self.timeout:g} s ({exc!r})") from exc
        except httpx.RequestError as exc:  # connection refused or dropped, bad encoding
            raise _Transient("connection error", f"{type(exc).__name__}: {exc}") from exc
        except BadReply as exc:
            raise _Transient("bad reply", str(exc)) from exc
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # A body of the wrong shape (e.g. `"function": "bash"`): as unusable as garbage.
            raise _Transient("bad reply", f"unexpected reply shape: {exc}") from exc

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

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "LLM %s: %s; retrying in %.1f s (attempt %d of %d)",
            self.shown,
            redact(str(exc)),
            wait,
            state.attempt_number + 1,
            self.max_attempts,
        )

    def _give_up(self, failures: list[_Transient]) -> NoReturn:
        kinds = [f.kind for f in failures]
        if len(set(kinds)) == 1:
            what = f"{kinds[0]} {len(kinds)} times"
        else:
            what = f"{len(kinds)} times ({', '.join(kinds)})"
        detail = redact(failures[-1].detail)  # an httpx error may quote the URL
        raise LLMUnavailable(f"LLM endpoint {self.shown} failed: {what}; last: {detail}") from None


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
        return json.loads(body)
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
