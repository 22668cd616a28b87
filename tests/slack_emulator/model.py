"""What the emulator remembers: Web API calls, messages as they stand now, ephemeral messages,
response_url posts, and the faults scripted for the next calls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One Web API request, as received, and how it was answered."""

    method: str
    params: dict[str, Any]  # form fields or JSON body; JSON-valued fields (blocks, view) decoded
    token: str | None
    at: float  # time.monotonic() on arrival
    status: int  # HTTP status sent (0: hung up without an answer)
    error: str | None  # the `error` of an `ok: false` answer
    retry_after: int | None = None  # the Retry-After of a 429 answer, in seconds

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass(frozen=True)
class Fault:
    """A scripted answer for one call: an HTTP `status` (429 with Retry-After, 500, 503), an
    `{"ok": false, "error": …}`, or a hang-up (`drop`), before or after the call took effect."""

    status: int = 200
    error: str | None = None
    retry_after: int | None = None
    body: str | None = None
    drop: bool = False
    applied: bool = False  # the call takes effect, then the answer is lost (drop) or the fault
    hold: threading.Event | None = None  # the call takes effect; the answer waits for this


@dataclass
class Message:
    """A channel message as it stands now (after every chat.update), with its reactions."""

    channel: str
    ts: str
    user: str
    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    team: str | None = None
    metadata: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # shared by completeUploadExternal
    reactions: dict[str, list[str]] = field(default_factory=dict)  # name -> users, in order
    versions: list[dict[str, Any]] = field(default_factory=list)  # earlier text/blocks

    @property
    def edits(self) -> int:
        return len(self.versions)

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def all_text(self) -> str:
        """`text` and every text inside the blocks, one per line: what a reader sees."""
        return "\n".join([self.text, *_texts(self.blocks)])

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """The button elements, in order (actions blocks and section accessories)."""
        found = []
        for block in self.blocks:
            for element in [*block.get("elements", []), block.get("accessory") or {}]:
                if element.get("type") == "button":
                    found.append(element)
        return found

    @property
    def action_ids(self) -> list[str]:
        return [b["action_id"] for b in self.buttons if "action_id" in b]

    def to_api(self, *, metadata: bool = True) -> dict[str, Any]:
        """The message object as Slack's API returns it (chat.postMessage, conversations.*);
        conversations.* leave `metadata` out unless asked with `include_all_metadata`."""
        out: dict[str, Any] = {"type": "message", "user": self.user}
        if self.bot_id:
            out.update(bot_id=self.bot_id, app_id=self.app_id)
        out.update(text=self.text, ts=self.ts, team=self.team)
        if self.blocks:
            out["blocks"] = self.blocks
        if self.attachments:
            out["attachments"] = self.attachments
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.files:
            out.update(files=self.files, upload=True, display_as_bot=False)
        if self.metadata is not None and metadata:
            out["metadata"] = self.metadata
        if self.versions:
            out["edited"] = {"user": self.user, "ts": self.versions[-1]["edited_ts"]}
        if self.reactions:
            out["reactions"] = [
                {"name": name, "users": users, "count": len(users)}
                for name, users in self.reactions.items()
            ]
        return out


@dataclass(frozen=True)
class Ephemeral:
    """A chat.postEphemeral message: only `user` sees it."""

    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None
    message_ts: str

    @property
    def all_text(self) -> str:
        return "\n".join([self.text, *_texts(self.blocks)])


@dataclass(frozen=True)
class ResponsePost:
    """A POST to a response_url handed out with a slash command or an interaction."""

    url: str
    body: dict[str, Any]
    at: float

    @property
    def ephemeral(self) -> bool:
        return self.body.get("response_type", "ephemeral") == "ephemeral"

    @property
    def all_text(self) -> str:
        return "\n".join([self.body.get("text", ""), *_texts(self.body.get("blocks") or [])])


def _texts(node: Any) -> list[str]:
    """Every string under a `text` key, depth first: section text, fields, buttons, context."""
    if isinstance(node, list):
        return [t for item in node for t in _texts(item)]
    if not isinstance(node, dict):
        return []
    found = [node["text"]] if isinstance(node.get("text"), str) else []
    return found + [t for value in node.values() for t in _texts(value)]


class ApiError(Exception):
    """An `{"ok": false, "error": …}` answer (HTTP 200), with any extra fields Slack adds."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra
