"""Slack's side of HTTP mode: sign a payload and POST it to the app's `/slack/events` URL.

Encoded as Slack does: slash commands form-encoded; Events API (and url_verification) JSON;
interactivity form-encoded as a single field `payload=<JSON>`. Signed with
`X-Slack-Request-Timestamp` and `X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))`.
Knobs forge the signature, age the timestamp past Slack's 5 minutes, or mark a retry."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.slack_emulator.payloads import envelope_type

STALE_SECONDS = 6 * 60  # past the 5 minutes signature verifiers accept


@dataclass(frozen=True)
class AppResponse:
    status: int
    text: str
    headers: dict[str, str] = field(repr=False)
    elapsed: float  # seconds, request sent to response read

    def json(self) -> Any:
        return json.loads(self.text)


def sign(signing_secret: str, timestamp: str | int, body: str) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> tuple[str, str]:
    """(content type, body) of `payload` as Slack POSTs it."""
    if payload.get("type") == "url_verification":
        return "application/json", json.dumps(payload)
    kind = envelope_type(payload)
    if kind == "slash_commands":
        return "application/x-www-form-urlencoded", urlencode(payload)
    if kind == "events_api":
        return "application/json", json.dumps(payload)
    return "application/x-www-form-urlencoded", urlencode({"payload": json.dumps(payload)})


def post_to_app(
    url: str,
    payload: dict[str, Any] | None = None,
    *,
    signing_secret: str,
    body: str | None = None,
    content_type: str | None = None,
    timestamp: int | None = None,
    stale: bool = False,
    forge: bool = False,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    client: httpx.Client | None = None,
    timeout: float = 5.0,
) -> AppResponse:
    """POST `payload` (or a raw `body`, e.g. a malformed one) to the app, signed as Slack signs.

    `forge` signs with the wrong secret; `stale` dates the request 6 minutes back (or give
    `timestamp`); `retry_num` adds `X-Slack-Retry-Num`/`X-Slack-Retry-Reason` as Slack does
    when it redelivers an event. Pass a shared `client` when sending many."""
    if body is None:
        if payload is None:
            raise ValueError("give a payload or a raw body")
        content_type, body = encode(payload)
    ts = timestamp if timestamp is not None else int(time.time()) - (STALE_SECONDS if stale else 0)
    secret = "forged-" + signing_secret if forge else signing_secret
    headers = {
        "Content-Type": content_type or "application/json",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(secret, ts, body),
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    started = time.perf_counter()
    if client is None:  # plain HTTP on this machine: no CA bundle to load (~45 ms a request)
        response = httpx.post(
            url, content=body.encode(), headers=headers, timeout=timeout, verify=False
        )
    else:
        response = client.post(url, content=body.encode(), headers=headers, timeout=timeout)
    return AppResponse(
        response.status_code, response.text, dict(response.headers), time.perf_counter() - started
    )
