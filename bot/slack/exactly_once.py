"""A row's message is posted once, however often its delivery is attempted: every post
carries message metadata naming its row (and this installation), and the row records when a
post went out (`sent_at`); a later attempt at a row whose earlier post got no recorded answer
(the process was killed, the connection dropped, Slack answered 5xx) first looks for that
message in the channel or thread and adopts it instead of posting again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot.slack.delivery import Delivery
from bot.slack.retry_policy import Permanent, Retry
from storage import outbox
from storage.models import Outbox

log = logging.getLogger("bot.slack.notifier")  # one logger for all of the notifier

# Every message we post carries {"event_type": METADATA_EVENT, "event_payload": {"outbox_id":
# row id, "install": installation id}}: how a retry recognises its own earlier post.
METADATA_EVENT = "nightcrew_outbox"
LOOKBACK = timedelta(minutes=10)  # search from this long before the unanswered post (clock skew)
LOOKUP_PAGE = 200  # messages per conversations.history/replies call
LOOKUP_PAGES = 10  # then the post is taken as lost: minutes of a very busy channel


def post_once(d: Delivery, row: Outbox, channel: str, **message: Any) -> tuple[str, bool]:
    """Post the row's message (in `message["thread_ts"]`'s thread if given) unless an
    earlier attempt already did: (its ts, whether it was found rather than posted)."""
    assert row.id is not None
    # A DM addressed by user id has no channel to read back: the notifier gives posts one.
    if row.sent_at is not None and not channel.startswith(("U", "W")):
        try:
            found = find_posted(d, row, channel, message.get("thread_ts"))
        except Permanent as exc:  # e.g. missing_scope: better a possible repeat than a loss
            log.warning(
                "outbox row %s: cannot look for its earlier post (%s); posting", row.id, exc
            )
            found = None
        if found is not None:
            log.info("outbox row %s: found its earlier post %s; not posting again", row.id, found)
            return found, True
    d.pace_channel(channel)
    with d.transaction() as session:  # still ours after the pacing, and marked in one go
        d.hold(row, session)
        outbox.mark_sending(session, row.id)
    metadata = {"event_type": METADATA_EVENT, "event_payload": payload(d, row)}
    try:
        answer = d.call(d.client.chat_postMessage, channel=channel, metadata=metadata, **message)
    except Retry as exc:
        exc.not_sent = exc.answered
        raise
    return str(answer["ts"]), False


def payload(d: Delivery, row: Outbox) -> dict[str, Any]:
    """What the metadata of the row's post says: its row and this installation."""
    return {"outbox_id": row.id, "install": d.install}


def find_posted(d: Delivery, row: Outbox, channel: str, thread_ts: str | None) -> str | None:
    """The ts of the message an earlier attempt at `row` posted, or None. Errors (429 and
    the like) propagate: the row is retried later and still looks before posting."""
    params: dict[str, Any] = {"channel": channel, "include_all_metadata": True}
    method = d.client.conversations_history  # include_all_metadata: else Slack omits it
    if thread_ts is not None:
        method, params["ts"] = d.client.conversations_replies, thread_ts
    want = payload(d, row)

    def ours(message: dict[str, Any]) -> bool:
        meta = message.get("metadata") or {}
        return meta.get("event_type") == METADATA_EVENT and meta.get("event_payload") == want

    return _look_back(d, row, method, params, ours)


def find_shared_file(
    d: Delivery, row: Outbox, channel: str, thread_ts: str, file_id: str
) -> str | None:
    """The ts of the thread message sharing `file_id` (an upload whose share got no
    recorded answer), or None."""

    def sharing(message: dict[str, Any]) -> bool:
        return any(f.get("id") == file_id for f in message.get("files") or [])

    params = {"channel": channel, "ts": thread_ts}
    return _look_back(d, row, d.client.conversations_replies, params, sharing)


def _look_back(
    d: Delivery,
    row: Outbox,
    method: Any,
    params: dict[str, Any],
    match: Callable[[dict[str, Any]], bool],
) -> str | None:
    """The ts of the first message `method` lists since the row's unanswered post that
    `match`es, page by page; None when there is none, or when the pages ran out first
    (said in the log: the caller posts again)."""
    assert row.sent_at is not None
    params = {
        **params,
        "oldest": f"{(row.sent_at - LOOKBACK).timestamp():.6f}",
        "limit": LOOKUP_PAGE,
    }
    for _ in range(LOOKUP_PAGES):
        answer = d.call(method, **params)
        for message in answer.get("messages") or []:
            if match(message):
                return str(message["ts"])
        params["cursor"] = (answer.get("response_metadata") or {}).get("next_cursor")
        if not params["cursor"]:
            return None
    log.warning("outbox row %s: not found in %s pages; posting again", row.id, LOOKUP_PAGES)
    return None
