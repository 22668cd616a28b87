"""The HTTP side every forge shares: the token in a header, bounded retries on 5xx and
connection errors, rate limits waited out (`Retry-After`, `X-RateLimit-Reset`), conditional
GETs (`ETag` / `If-None-Match`: an unchanged answer costs GitHub no rate limit) and `Link`
pagination. Every error raised is a `ForgeError` whose text went through `redact`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from executor.config.redact import register_secret
from executor.forge.base import ForgeError

SERVER_RETRIES = 4  # a 5xx or a dropped connection: tried this many times in all
BACKOFF_S = 0.5  # first wait after a 5xx; doubles, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
# A rate limit is waited out, however many answers say so, for at most this long in all
# (GitHub's primary limit resets hourly): then the caller gets RateLimited and tries later
# (the task keeps its state: nothing is lost, it is only delayed).
RATE_LIMIT_PATIENCE_S = 15 * 60
MAX_SINGLE_WAIT_S = 5 * 60
TIMEOUT_S = 30.0
CACHE_ENTRIES = 512  # conditional GETs remembered per client


class RateLimited(ForgeError):
    """Still rate limited after waiting RATE_LIMIT_PATIENCE_S."""


class _Retry(Exception):
    """Internal: an answer worth asking again (5xx)."""


class _Limited(Exception):
    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s


@dataclass
class Answer:
    status: int
    body: Any
    headers: httpx.Headers


@dataclass
class Http:
    base_url: str
    auth_headers: dict[str, str]
    token: str | None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    _client: httpx.Client = field(init=False)
    _cache: dict[str, tuple[str, Any]] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        register_secret(self.token)
        self._client = httpx.Client(
            base_url=self.base_url.rstrip("/") + "/",
            headers={"User-Agent": "nightcrew", **self.auth_headers},
            timeout=TIMEOUT_S,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> Answer:
        """One call; an answer outside `ok` (after retries) raises ForgeError with the
        forge's own message. GETs are conditional on the last ETag seen for the URL."""
        limited_since: float | None = None
        while True:
            try:
                return self._with_server_retries(method, path, json_body, params, ok)
            except _Limited as limit:
                now = self.clock()
                limited_since = now if limited_since is None else limited_since
                if now - limited_since + limit.wait_s > RATE_LIMIT_PATIENCE_S:
                    raise RateLimited(
                        f"{method} {path}: rate limited by the forge for more than "
                        f"{RATE_LIMIT_PATIENCE_S // 60} minutes; trying again later",
                        status=429,
                    ) from None
                self.sleep(limit.wait_s)

    def _with_server_retries(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | None,
        params: dict[str, Any] | None,
        ok: tuple[int, ...],
    ) -> Answer:
        @retry(
            retry=retry_if_exception_type((_Retry, httpx.TransportError)),
            stop=stop_after_attempt(SERVER_RETRIES) | stop_after_delay(120),
            wait=_backoff,
            sleep=self.sleep,
            reraise=True,
        )
        def once() -> Answer:
            return self._once(method, path, json_body, params, ok)

        try:
            return once()
        except _Retry as exc:
            raise ForgeError(f"{method} {path}: {exc}", status=502) from None
        except httpx.TransportError as exc:
            raise ForgeError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def _once(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | None,
        params: dict[str, Any] | None,
        ok: tuple[int, ...],
    ) -> Answer:
        url = str(self._client.build_request(method, path, params=params).url)
        headers: dict[str, str] = {}
        cached = self._cache.get(url) if method == "GET" else None
        if cached is not None:
            headers["If-None-Match"] = cached[0]
        response = self._client.request(
            method, path, json=json_body, params=params, headers=headers
        )
        if response.status_code == 304 and cached is not None:
            return Answer(200, cached[1], response.headers)
        wait = _rate_limit_wait(response, self.clock())
        if wait is not None:
            raise _Limited(wait)
        if response.status_code >= 500:
            raise _Retry(f"the forge answered {response.status_code}")
        body = _body(response)
        if response.status_code not in ok:
            raise ForgeError(
                f"{method} {path}: {response.status_code} {message_of(body)}",
                status=response.status_code,
            )
        etag = response.headers.get("ETag")
        if method == "GET" and etag:
            with self._lock:
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[url] = (etag, body)
        return Answer(response.status_code, body, response.headers)

    def pages(
        self, path: str, params: dict[str, Any] | None = None, limit: int = 20
    ) -> Iterator[Any]:
        """Every item of a list answer, following `Link: <…>; rel="next"` (GitHub and
        GitLab both send it) for at most `limit` pages."""
        answer = self.request("GET", path, params={"per_page": 100, **(params or {})})
        for _ in range(limit):
            yield from answer.body if isinstance(answer.body, list) else []
            following = _next_link(answer.headers.get("Link", ""))
            if following is None:
                return
            relative = following.removeprefix(str(self._client.base_url))
            answer = self.request("GET", relative)


def message_of(body: Any) -> str:
    """The forge's own words about an error (GitHub: `message`; GitLab: `message` or
    `error`, sometimes a list or a mapping)."""
    if isinstance(body, dict):
        text = body.get("message") or body.get("error") or body.get("error_description")
        if isinstance(text, list | dict):
            text = json.dumps(text)
        return str(text or "")[:500]
    return str(body or "")[:500]


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Seconds to wait when the answer is a rate limit (429, or 403 with Retry-After or no
    requests remaining), else None."""
    status = response.status_code
    if status not in (403, 429):
        return None
    after = response.headers.get("Retry-After")
    if after:
        try:
            seconds = float(after)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(after).timestamp() - now
            except (TypeError, ValueError):
                seconds = 60.0
        return min(max(seconds, 1.0), MAX_SINGLE_WAIT_S)
    remaining = response.headers.get(
        "X-RateLimit-Remaining", response.headers.get("RateLimit-Remaining")
    )
    reset = response.headers.get("X-RateLimit-Reset", response.headers.get("RateLimit-Reset"))
    if remaining == "0" and reset:
        try:
            return min(max(float(reset) - now, 1.0), MAX_SINGLE_WAIT_S)
        except ValueError:
            return 60.0
    if status == 429 or "rate limit" in response.text[:2000].lower():
        return 60.0  # GitHub's secondary limits may say so in words only
    return None  # a plain 403: permission denied, not a limit


def _backoff(state: RetryCallState) -> float:
    return min(BACKOFF_S * 2 ** (state.attempt_number - 1), MAX_BACKOFF_S)


def _next_link(link: str) -> str | None:
    for part in link.split(","):
        url, _, rel = part.partition(";")
        if 'rel="next"' in rel:
            return url.strip().strip("<>")
    return None
