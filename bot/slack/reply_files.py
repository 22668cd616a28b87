"""Fetching the files attached to a reply, with the bot token, from Slack only.

The token goes only to Slack's file host (`https://files.slack.com`) or to the Slack API
host this installation is configured with (`SLACK_API_URL`, e.g. an on-premise proxy or
the test emulator): a file object whose address points anywhere else is named to the agent,
never fetched, so no event or API answer can make the bot send its token elsewhere.
Redirects are not followed, for the same reason. At most `cap` bytes are read per file."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack import replies
from bot.slack.replies import Attached

log = logging.getLogger(__name__)
SLACK_FILES = "https://files.slack.com"
TIMEOUT_S = 15
DEFAULT_PORTS = {"https": 443, "http": 80}


class FetchError(Exception):
    """Why a file could not be read, in words for the agent and the person."""


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `url`; None if it has none (or carries a user part)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return parts.scheme, parts.hostname.lower(), port


def trusted_origins(api_url: str) -> set[tuple[str, str, int]]:
    """Where the bot token may go: Slack's file host and the configured API host."""
    found = {origin(SLACK_FILES), origin(api_url)}
    return {o for o in found if o is not None}


def fetch_all(client: WebClient, files: list[dict[str, Any]], *, cap: int) -> list[Attached]:
    """Each file of a reply as the agent gets it (read, or named with why not)."""
    trusted = trusted_origins(client.base_url)
    out: list[Attached] = []
    with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as session:
        for index, file in enumerate(files):
            if index >= replies.MAX_FILES:
                out.append(_named(file, f"more than {replies.MAX_FILES} files in one reply"))
                continue
            out.append(_one(client, session, file, cap=cap, trusted=trusted))
    return out


def _named(file: dict[str, Any], why: str) -> Attached:
    name = str(file.get("name") or file.get("title") or file.get("id") or "a file")
    return Attached(name, _size(file), str(file.get("mimetype") or ""), why_not=why)


def _size(file: dict[str, Any]) -> int:
    try:
        return max(0, int(file.get("size") or 0))
    except (TypeError, ValueError):
        return 0


def _one(
    client: WebClient,
    http: httpx.Client,
    file: dict[str, Any],
    *,
    cap: int,
    trusted: set[tuple[str, str, int]],
) -> Attached:
    if file.get("file_access") == "check_file_info" or not _address(file):
        try:  # Slack sends some file objects as a stub: files.info has the rest
            file = client.files_info(file=str(file.get("id") or "")).get("file") or file
        except SlackApiError as exc:
            return _named(file, f"Slack did not describe it ({exc.response.get('error')})")
    if file.get("mode") == "tombstone":
        return _named(file, "it was deleted")
    if file.get("is_external") or file.get("mode") == "external":
        return _named(file, "it is a link to a file outside Slack")
    if replies.is_image(file):
        return _named(file, replies.IMAGE_NOTE)
    size = _size(file)
    if size > cap:
        return _named(file, replies.too_big(size, cap))
    url = _address(file)
    if origin(url) not in trusted:
        log.warning("a reply's file %s points outside Slack; not fetched", file.get("id"))
        return _named(file, "its address is not Slack's file host, so it was not fetched")
    try:
        data = _download(http, url, client.token or "", cap=cap, mimetype=file.get("mimetype"))
    except FetchError as exc:
        return _named(file, str(exc))
    text = replies.decode_text(data)
    if text is None:
        return _named(file, replies.BINARY_NOTE)
    named = _named(file, "")
    return Attached(named.name, len(data), named.mimetype, text=text)


def _address(file: dict[str, Any]) -> str:
    return str(file.get("url_private_download") or file.get("url_private") or "")


def _download(http: httpx.Client, url: str, token: str, *, cap: int, mimetype: object) -> bytes:
    try:
        with http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as answer:
            if answer.status_code != 200:
                raise FetchError(f"Slack answered HTTP {answer.status_code} for it")
            kind = answer.headers.get("content-type", "")
            if kind.startswith("text/html") and mimetype != "text/html":
                # Slack's sign-in page instead of the file: the token may not read files.
                raise FetchError("Slack sent a web page instead (is files:read granted?)")
            data = bytearray()
            for chunk in answer.iter_bytes():
                data += chunk
                if len(data) > cap:
                    raise FetchError(f"more than the {cap:,}-byte limit for files passed on")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise FetchError(f"it could not be fetched ({type(exc).__name__})") from None
