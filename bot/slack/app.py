"""The Bolt app and its clients: `SlackEnv` (tokens and the API URL from the environment),
`build_app` (every listener registered), the WSGI handler HTTP mode serves, and the
notifier's client. How the app runs (Socket Mode, HTTP, the notifier thread) is run.py."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dotenv import dotenv_values
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from sqlalchemy import Engine

from bot.links import Signer
from bot.slack.listeners import register
from executor.config.schema import Config
from executor.config.settings import here

log = logging.getLogger(__name__)
SLACK_API = "https://slack.com/api/"


@dataclass(frozen=True)
class SlackEnv:
    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None
    api_url: str = SLACK_API
    file_max_bytes: int = 100_000  # a reply's text file reaches the agent up to this size

    @classmethod
    def from_env(cls) -> SlackEnv | None:
        """From the environment, then `.env` in the working directory (as for the other
        settings); None when Slack is not configured (no SLACK_BOT_TOKEN)."""
        env = {**dotenv_values(".env"), **os.environ}
        token = env.get("SLACK_BOT_TOKEN")
        if not token:
            return None
        return cls(
            bot_token=token,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            api_url=env.get("SLACK_API_URL") or SLACK_API,
            file_max_bytes=here().slack_file_max_bytes,
        )


def build_app(
    engine: Engine, config: Callable[[], Config], env: SlackEnv, *, signer: Signer | None = None
) -> App:
    """The Bolt app with every listener. Calls auth.test at once (Bolt checks its token).
    `signer` makes the page links (`/agent review`, the App Home); without it, none."""
    client = WebClient(
        token=env.bot_token, base_url=env.api_url, retry_handlers=[RateLimitErrorRetryHandler()]
    )
    app = App(
        client=client,
        signing_secret=env.signing_secret or "",
        # Socket Mode requests carry no signature; HTTP mode always verifies.
        request_verification_enabled=env.signing_secret is not None,
        # Ack functions answer in the request itself; Bolt's default would run them in a
        # thread and poll for the ack every 10 ms. Slow work runs in lazy listeners.
        process_before_response=True,
        # Bolt's own logger (not ours): its notes are a library's, shown with --verbose only.
        logger=logging.getLogger("slack_bolt.App"),
    )
    register(app, engine, config, signer, file_max_bytes=env.file_max_bytes)
    return app


def notifier_client(env: SlackEnv) -> WebClient:
    # No SDK retries: a resend after a lost answer would post twice. The notifier retries
    # per outbox row instead.
    return WebClient(token=env.bot_token, base_url=env.api_url, retry_handlers=[], timeout=30)


def files_client(env: SlackEnv) -> WebClient:
    """The client that fetches replies' files the bot did not finish before a restart
    (`pending_files`): reads only, so the SDK may retry what Slack rate-limits."""
    return WebClient(
        token=env.bot_token, base_url=env.api_url, retry_handlers=[RateLimitErrorRetryHandler()]
    )


Health = Callable[[], tuple[str, dict[str, Any]]]


def wsgi_app(app: App, health: Health | None = None) -> Callable[..., Any]:
    """Bolt's WSGI handler behind two guards: only POST /slack/events, and a body Bolt cannot
    parse (it parses before verifying the signature) is a 400, not a 500 with a traceback.
    With `health`, GET /healthz answers it (status line, JSON body): a load balancer in
    front of the Slack endpoint probes the same port."""
    bolt = SlackRequestHandler(app)

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if health is not None and environ.get("PATH_INFO") == "/healthz":
            status, body = health()
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        if environ.get("PATH_INFO") != "/slack/events" or environ["REQUEST_METHOD"] != "POST":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        try:
            return bolt(environ, start_response)
        except Exception:
            log.info("refused a request Bolt could not parse", exc_info=True)
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"malformed request"]

    return handle
