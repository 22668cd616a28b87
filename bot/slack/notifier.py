"""Delivers the outbox to Slack: posts and edits task cards, posts milestones in threads,
posts messages of their own (the digest).

Exactly once per row: the SDK's own retries are off (a resent post whose answer was lost
would appear twice); each row is claimed under a lease and settled in the transaction that
learns the result (a card's `ts` becomes the task's thread in that same step). Every post
carries message metadata naming its row, and the row records when a post went out; a later
attempt at a row whose earlier post got no recorded answer (the process was killed, the
connection dropped, Slack answered 5xx) first looks for that message in the channel or
thread and adopts it instead of posting again.

A 429 is not a failed attempt: the method's gate (shared by the process's workers, see
rate_gate.py) stays closed for Retry-After, and the row waits it out, however long, until it
is older than `max_age_s`; then it is given up visibly (a warning, a metric, `nightcrew
doctor`). A task's thread messages keep their order (storage/outbox.py). Other transient
failures (5xx, connection errors) are retried per row with backoff, a bounded number of
times; permanent ones are recorded on the row and in the task's log, and never retried. A
card Slack will no longer let us edit is posted afresh and the task re-bound to it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.links import Signer
from bot.slack import blocks
from bot.slack.plan_blocks import plan_card
from bot.slack.rate_gate import RateGate, gate_for, method_name
from executor.monitoring import metrics
from executor.runner.fleet import installation_id
from storage import outbox
from storage.db import transaction, writer_turn
from storage.lifecycle import CLOSED, State
from storage.models import Nudge, Outbox, Plan, Task, TaskEvent, utcnow
from storage.plans import plan_tasks
from storage.spend import spent_on_plan
from storage.tasks import record

log = logging.getLogger(__name__)

# Errors Slack may answer with HTTP 200 that go away by themselves; any other error is final.
TRANSIENT_ERRORS = {
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}
# chat.update answers meaning this card can never be edited again: post a fresh one.
EDIT_REFUSED = {"cant_update_message", "edit_window_closed"}  # the message is still there
CARD_GONE = {"message_not_found", "channel_not_found", "is_archived"}


@dataclass
class Tunables:
    lease_s: float = 60.0  # longer than any one Web API call (timeout 30 s) can take
    card_edit_interval_s: float = 3.0  # "at most one edit per task every few seconds"
    channel_interval_s: float = 1.0  # Slack allows about one post per second per channel
    backoff_base_s: float = 1.0  # doubled per failed attempt
    backoff_max_s: float = 300.0
    max_attempts: int = 10  # then the row is given up and the failure recorded
    # A rate-limited row is waited out this long (from when it was written), then given up:
    # a day covers any storm Slack has had; NIGHTCREW_SLACK_MAX_AGE_H sets it.
    max_age_s: float = 24 * 3600.0
    rate_limit_default_s: float = 5.0  # a 429 without Retry-After (Slack always sends one)
    idle_poll_s: float = 0.5  # how soon a new outbox row is noticed
    reaction_poll_s: float = 2.0  # how soon ✅ follows the agent taking a nudge
    # The diff file in a thread: Slack takes up to 1 GB, but its viewer (and a phone) chokes
    # long before; beyond this the file is cut at a line and its comment links the page.
    file_max_bytes: int = 1_000_000


# Every message we post carries {"event_type": METADATA_EVENT, "event_payload": {"outbox_id":
# row id, "install": installation id}}: how a retry recognises its own earlier post.
METADATA_EVENT = "nightcrew_outbox"
LOOKBACK = timedelta(minutes=10)  # search from this long before the unanswered post (clock skew)
LOOKUP_PAGE = 200  # messages per conversations.history/replies call
LOOKUP_PAGES = 10  # then the post is taken as lost: minutes of a very busy channel


class _Retry(Exception):
    def __init__(
        self,
        error: str,
        after_s: float | None = None,
        *,
        answered: bool,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(error)
        self.error, self.after_s = error, after_s
        self.answered = answered  # Slack said it did not do it (429, an error), vs no answer
        self.not_sent = False  # set for a post Slack answered: no need to look for it later
        self.rate_limited = rate_limited  # wait `after_s`; not a failed attempt


class _Permanent(Exception):
    pass


@dataclass
class Notifier:
    engine: Engine
    client: WebClient  # build with retry_handlers=[]: retries are ours, per row
    tunables: Tunables = field(default_factory=Tunables)
    signer: Signer | None = None  # page links (Open buttons, the diff file's comment)
    _last_edit: dict[int, float] = field(default_factory=dict)
    _last_post: dict[str, float] = field(default_factory=dict)
    _dms: dict[str, str] = field(default_factory=dict)  # user id -> the app's DM channel id
    _install: str = ""
    gate: RateGate | None = None  # None: the process's gate for this client's workspace

    def __post_init__(self) -> None:
        # Tells this installation's posts from another's in the same channel (row ids clash).
        self._install = installation_id(self.engine)
        if self.gate is None:
            self.gate = gate_for(str(self.client.base_url), str(self.client.token or ""))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sent = self.deliver_due(stop)
            except Exception:  # a database hiccup must not end delivery for good
                log.exception("outbox delivery failed; retrying")
                sent = 0
            if not sent:
                stop.wait(self.tunables.idle_poll_s)

    def deliver_due(self, stop: threading.Event | None = None) -> int:
        """Claim due rows and deliver each; the number of rows handled. A stop request is
        honoured between rows, never between a post and its record; rows claimed but not
        sent come back when their lease runs out."""
        with self._transaction() as session:
            rows = outbox.claim_due(session, lease_s=self.tunables.lease_s)
        for row in rows:
            if stop is not None and stop.is_set():
                break
            self._deliver(row)
        return len(rows)

    def _deliver(self, row: Outbox) -> None:
        assert row.id is not None
        with self._transaction() as session:
            task = session.get(Task, row.task_id) if row.task_id else None
            if task is not None:
                session.expunge(task)
        if row.kind in ("post", "plan"):  # not about one task: the digest, a plan's card
            task = None
        elif task is None or not task.channel:
            self._settle(lambda s: outbox.give_up(s, row.id, error="no task or channel"))
            return
        try:
            if task is None and row.kind == "plan":
                self._plan(row)
            elif task is None:
                self._post(row)
            elif row.kind == "card":
                self._card(row, task)
            elif row.kind == "state":
                self._state(row, task)
            elif row.kind == "note":
                self._note(row, task)
            elif row.kind == "react":
                self._react(row, task)
            elif row.kind == "file":
                self._file(row, task)
            else:
                self._settle(lambda s: outbox.give_up(s, row.id, error=f"unknown {row.kind}"))
        except _Retry as exc:
            self._retry(row, task, exc)
        except _Permanent as exc:
            self._fail(row, task, str(exc))
        except Exception as exc:  # a bug must cost attempts, or the row loops forever
            log.exception("outbox row %s: unexpected error", row.id)
            self._retry(row, task, _Retry(f"{type(exc).__name__}: {exc}", answered=False))

    def _card(self, row: Outbox, task: Task) -> None:
        assert row.id is not None and task.id is not None and task.channel
        text, card = blocks.card(task, open_url=self._page(task))
        if task.thread_ts is None:
            ts, adopted = self._post_once(row, task.channel, text=text, blocks=card)

            def posted(session: Any) -> None:
                outbox.card_posted(session, row.id, task.id, ts)
                if adopted:  # it shows the task as it was then: edit it to now
                    outbox.request_card(session, task.id)

            self._sent(row)
            self._settle(posted)
            self._last_edit[task.id] = time.monotonic()
            return
        wait = self._last_edit.get(task.id, -1e9) + self.tunables.card_edit_interval_s
        if time.monotonic() < wait:  # coalesce: the row waits, newer ones replace it
            self._defer(row, wait - time.monotonic())
            return
        try:
            self._call(
                self.client.chat_update,
                channel=task.channel,
                ts=task.card_ts or task.thread_ts,
                text=text,
                blocks=card,
            )
        except _Permanent as exc:
            if str(exc) not in EDIT_REFUSED | CARD_GONE:
                raise
            self._repost_card(row, task, text, card, str(exc))
            return
        self._sent(row)
        self._last_edit[task.id] = time.monotonic()
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _repost_card(
        self, row: Outbox, task: Task, text: str, card: list[blocks.Block], why: str
    ) -> None:
        """Slack will not let us edit the card any more (`why`): post a fresh one in its
        thread, or as a new thread when the old one is gone (the card was the thread's root
        and is not found), re-bind the task to it, and say why in the thread."""
        assert row.id is not None and task.id is not None and task.channel and task.thread_ts
        gone = why in CARD_GONE and task.card_ts is None
        log.warning(
            "task %s: its card cannot be edited (%s); posting a fresh one %s",
            task.id,
            why,
            "as a new thread" if gone else "in its thread",
        )
        where = {} if gone else {"thread_ts": task.thread_ts}
        ts, adopted = self._post_once(row, task.channel, text=text, blocks=card, **where)

        def moved(session: Any) -> None:
            outbox.card_moved(
                session,
                row.id,
                task.id,
                thread_ts=ts if gone else task.thread_ts,
                card_ts=None if gone else ts,
                why=why,
            )
            if adopted:  # it shows the task as it was then: edit it to now
                outbox.request_card(session, task.id)

        self._sent(row)
        self._settle(moved)
        self._last_edit[task.id] = time.monotonic()

    def _note(self, row: Outbox, task: Task) -> None:
        """A short line in the task's thread: why a fresh card was posted, or that the agent
        took a reply without its files."""
        assert row.id is not None and task.channel
        if task.thread_ts is None:
            self._settle(lambda s: outbox.give_up(s, row.id, error="no thread"))
            return
        missed = row.payload.get("files_missed")
        if isinstance(missed, dict):
            author, files = str(missed.get("author") or ""), missed.get("files") or []
            line = blocks.files_missed(task, author, files)
        else:
            line = blocks.card_moved(task, str(row.payload.get("card_moved") or ""))
        self._post_once(row, task.channel, thread_ts=task.thread_ts, text=line)
        self._sent(row)
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _plan(self, row: Outbox) -> None:
        """Post the plan's card (its ts becomes the plan's thread) or edit it to show the plan
        as it is now; a row with a newer one pending for the same plan is settled unsent."""
        assert row.id is not None
        plan_id = int(row.payload.get("plan_id") or 0)
        with self._transaction() as session:
            plan = session.get(Plan, plan_id)
            newer = (
                plan is not None
                and plan.thread_ts is not None
                and any(
                    (r.payload or {}).get("plan_id") == plan_id
                    for r in session.exec(
                        select(Outbox).where(
                            Outbox.kind == "plan",
                            col(Outbox.delivered_at).is_(None),
                            col(Outbox.id) > row.id,
                        )
                    ).all()
                )
            )
            tasks = plan_tasks(session, plan_id)
            planning = spent_on_plan(session, plan_id)
            session.expunge_all()
        if plan is None or not plan.channel:
            self._settle(lambda s: outbox.give_up(s, row.id, error="no plan or channel"))
            return
        if newer:  # that one shows the plan as it is now
            self._settle(lambda s: outbox.mark_delivered(s, row.id))
            return
        channel = plan.channel
        links = {
            t.id: f"https://slack.com/archives/{t.channel}/p{t.thread_ts.replace('.', '')}"
            for t in tasks
            if t.id is not None and t.channel and t.thread_ts
        }
        page = self.signer.plan_url(plan_id, f"channel:{channel}") if self.signer else None
        text, card = plan_card(plan, tasks, links=links, page=page, planning=planning)
        if plan.thread_ts is None:
            ts, adopted = self._post_once(row, channel, text=text, blocks=card)

            def posted(session: Any) -> None:
                stored = session.get(Plan, plan_id)
                if stored is not None and stored.thread_ts is None:
                    stored.thread_ts = ts
                    session.add(stored)
                outbox.mark_delivered(session, row.id)
                if adopted:  # it shows the plan as it was then: edit it to now
                    session.add(Outbox(kind="plan", payload={"plan_id": plan_id}))

            self._sent(row)
            self._settle(posted)
            return
        self._call(
            self.client.chat_update, channel=channel, ts=plan.thread_ts, text=text, blocks=card
        )
        self._sent(row)
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _post(self, row: Outbox) -> None:
        """A message of its own (the digest): `payload` has channel, text and blocks."""
        assert row.id is not None
        channel = str(row.payload.get("channel") or "")
        if not channel:
            raise _Permanent("post without a channel")
        if channel.startswith(("U", "W")):  # a DM: its channel id, so a retry can look in it
            channel = self._dm(channel)
        self._post_once(
            row,
            channel,
            text=row.payload.get("text") or "",
            blocks=row.payload.get("blocks") or None,
        )
        self._sent(row)
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _state(self, row: Outbox, task: Task) -> None:
        assert row.id is not None and task.id is not None and task.channel
        if task.thread_ts is None:
            with self._transaction() as session:
                waiting = outbox.card_wait_s(session, task.id)
            if waiting is not None:  # the card (thread root) first
                self._defer(row, max(waiting, self.tunables.idle_poll_s))
                return
            # The card's own failure is already in the log; one line per milestone is noise.
            self._settle(lambda s: outbox.give_up(s, row.id, error="no card, so no thread"))
            return
        line = blocks.milestone(task, row.payload)
        if line is not None:
            extra = self._proof_blocks(task) if row.payload.get("to") == "awaiting_approval" else []
            self._post_once(
                row,
                task.channel,
                thread_ts=task.thread_ts,
                text=line,
                blocks=[blocks.section(line), *extra] if extra else None,
            )
            self._sent(row)

        def settle(session: Any) -> None:
            outbox.mark_delivered(session, row.id)
            outbox.request_card(session, task.id)  # the card shows the new state too
            if row.payload.get("to") == "awaiting_approval":
                _queue_files(session, task.id)

        self._settle(settle)

    def _page(self, task: Task) -> str | None:
        """A signed link to the task's page for whoever sees the card (its channel)."""
        if self.signer is None or task.id is None:
            return None
        return self.signer.task_url(task.id, f"channel:{task.channel}")

    def _file(self, row: Outbox, task: Task) -> None:
        """Share a file (the whole diff, or the interdiff since an approval) in the task's
        thread, once: the file id is recorded with the start of the share, and a later
        attempt whose share got no answer looks for a message holding that file first."""
        assert row.id is not None and task.id is not None and task.channel
        if task.thread_ts is None:
            with self._transaction() as session:
                waiting = outbox.has_pending_card(session, task.id)
            if waiting:
                self._defer(row, self.tunables.idle_poll_s)
            else:
                self._settle(lambda s: outbox.give_up(s, row.id, error="no card, so no thread"))
            return
        earlier = row.payload.get("file_id")
        if row.sent_at is not None and earlier and self._find_file(row, task, str(earlier)):
            log.info("outbox row %s: file %s already shared; not again", row.id, earlier)
            self._settle(lambda s: outbox.mark_delivered(s, row.id))
            return
        content = self._file_content(row, task)
        if content is None:
            self._settle(lambda s: outbox.mark_delivered(s, row.id))  # nothing to share
            return
        name, data, comment = content
        answer = self._call(self.client.files_getUploadURLExternal, filename=name, length=len(data))
        self._upload(str(answer["upload_url"]), data)
        file_id = str(answer["file_id"])
        self._settle(lambda s: outbox.note_upload(s, row.id, file_id))
        title = name.removesuffix(".diff")
        try:
            self._call(
                self.client.files_completeUploadExternal,
                files=[{"id": file_id, "title": title}],
                channel_id=task.channel,
                thread_ts=task.thread_ts,
                initial_comment=comment,
            )
        except _Retry as exc:
            exc.not_sent = exc.answered
            raise
        self._sent(row)
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _upload(self, url: str, data: bytes) -> None:
        """The bytes to the upload URL Slack gave (a POST, not a Web API method)."""
        try:
            answer = httpx.post(url, content=data, timeout=30)
        except httpx.HTTPError as exc:
            raise _Retry(f"upload: {type(exc).__name__}", answered=True) from None
        if answer.status_code != 200:
            raise _Retry(f"upload: HTTP {answer.status_code}", answered=True)

    def _file_content(self, row: Outbox, task: Task) -> tuple[str, bytes, str] | None:
        """(file name, bytes, the comment shared with it), or None when there is no diff."""
        with self._transaction() as session:
            event = session.get(TaskEvent, row.payload.get("event"))
            payload = dict(event.payload) if event is not None else {}
        cut = 0
        if row.payload.get("what") == "interdiff":
            since = payload.get("since_approval") or {}
            text = str(since.get("diff") or "")
            approved = str(since.get("approved") or "")[:12]
            name = f"task-{task.id}-since-approval.diff"
            intro = f"What changed in task {task.id} since the approved `{approved}`"
        else:
            text, cut = str(payload.get("diff") or ""), int(payload.get("cut") or 0)
            name = f"task-{task.id}.diff"
            intro = f"The whole diff of task {task.id}"
        if not text.strip():
            return None
        data = text.encode()
        cap = self.tunables.file_max_bytes
        if len(data) > cap:
            kept = data[:cap].rsplit(b"\n", 1)[0] + b"\n"
            cut += len(data) - len(kept)
            data = kept
        comment = intro
        if cut:
            comment += f" (cut: {cut:,} more bytes not in this file)"
        page = self._page(task)
        if page:
            comment += f"; all of it on <{page}|the task's page>" if cut else f" · <{page}|Open>"
        return name, data, comment

    def _find_file(self, row: Outbox, task: Task, file_id: str) -> str | None:
        """The ts of the thread message sharing `file_id`, or None."""
        assert row.sent_at is not None and task.thread_ts is not None
        params: dict[str, Any] = {
            "channel": task.channel,
            "ts": task.thread_ts,
            "oldest": f"{(row.sent_at - LOOKBACK).timestamp():.6f}",
            "limit": LOOKUP_PAGE,
        }
        for _ in range(LOOKUP_PAGES):
            answer = self._call(self.client.conversations_replies, **params)
            for message in answer.get("messages") or []:
                if any(f.get("id") == file_id for f in message.get("files") or []):
                    return str(message["ts"])
            params["cursor"] = (answer.get("response_metadata") or {}).get("next_cursor")
            if not params["cursor"]:
                return None
        return None

    def _proof_blocks(self, task: Task) -> list[blocks.Block]:
        with self._transaction() as session:
            event = session.exec(
                select(TaskEvent)
                .where(TaskEvent.task_id == task.id, TaskEvent.kind == "proof")
                .order_by(col(TaskEvent.id).desc())
            ).first()
        return blocks.proof(event.payload) if event else []

    def _react(self, row: Outbox, task: Task) -> None:
        assert row.id is not None and task.channel
        nudge_id = row.payload.get("after_nudge")
        if nudge_id is not None:
            with self._transaction() as session:
                nudge = session.get(Nudge, nudge_id)
                taken = nudge is None or nudge.consumed_at is not None
                withdrawn = nudge is not None and nudge.deleted_at is not None
            if withdrawn or (not taken and State(task.state) in CLOSED):  # nobody reads it: moot
                self._settle(lambda s: outbox.mark_delivered(s, row.id))
                return
            if not taken:  # the agent reads nudges between turns; look again shortly
                self._defer(row, self.tunables.reaction_poll_s)
                return
        try:
            self._call(
                self.client.reactions_add,
                channel=task.channel,
                timestamp=row.payload["ts"],
                name=row.payload["name"],
            )
            self._sent(row)
        except _Permanent as exc:
            if str(exc) != "already_reacted":  # reactions are idempotent: already done
                raise
        self._settle(lambda s: outbox.mark_delivered(s, row.id))

    def _post_once(self, row: Outbox, channel: str, **message: Any) -> tuple[str, bool]:
        """Post the row's message (in `message["thread_ts"]`'s thread if given) unless an
        earlier attempt already did: (its ts, whether it was found rather than posted)."""
        assert row.id is not None
        # A DM addressed by user id has no channel to read back: `_dm` gives posts one.
        if row.sent_at is not None and not channel.startswith(("U", "W")):
            try:
                found = self._find_posted(row, channel, message.get("thread_ts"))
            except _Permanent as exc:  # e.g. missing_scope: better a possible repeat than a loss
                log.warning(
                    "outbox row %s: cannot look for its earlier post (%s); posting", row.id, exc
                )
                found = None
            if found is not None:
                log.info(
                    "outbox row %s: found its earlier post %s; not posting again", row.id, found
                )
                return found, True
        self._pace_channel(row, channel)
        self._settle(lambda s: outbox.mark_sending(s, row.id))
        metadata = {"event_type": METADATA_EVENT, "event_payload": self._payload(row)}
        try:
            answer = self._call(
                self.client.chat_postMessage, channel=channel, metadata=metadata, **message
            )
        except _Retry as exc:
            exc.not_sent = exc.answered
            raise
        return str(answer["ts"]), False

    def _dm(self, user: str) -> str:
        """The app's DM channel with `user` (conversations.open, remembered). Without it
        (im:write not granted) the post goes to the user id, and a retry cannot look for it."""
        if user not in self._dms:
            try:
                answer = self._call(self.client.conversations_open, users=user)
            except _Permanent as exc:
                log.warning("cannot open the DM with %s (%s); posting by user id", user, exc)
                return user
            self._dms[user] = str(answer["channel"]["id"])
        return self._dms[user]

    def _payload(self, row: Outbox) -> dict[str, Any]:
        return {"outbox_id": row.id, "install": self._install}

    def _find_posted(self, row: Outbox, channel: str, thread_ts: str | None) -> str | None:
        """The ts of the message an earlier attempt at `row` posted, or None. Errors (429 and
        the like) propagate: the row is retried later and still looks before posting."""
        assert row.sent_at is not None
        params: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{(row.sent_at - LOOKBACK).timestamp():.6f}",
            "include_all_metadata": True,  # without it Slack leaves metadata out
            "limit": LOOKUP_PAGE,
        }
        method = self.client.conversations_history
        if thread_ts is not None:
            method, params["ts"] = self.client.conversations_replies, thread_ts
        want = self._payload(row)
        for _ in range(LOOKUP_PAGES):
            answer = self._call(method, **params)
            for message in answer.get("messages") or []:
                meta = message.get("metadata") or {}
                if meta.get("event_type") == METADATA_EVENT and meta.get("event_payload") == want:
                    return str(message["ts"])
            params["cursor"] = (answer.get("response_metadata") or {}).get("next_cursor")
            if not params["cursor"]:
                return None
        log.warning("outbox row %s: not found in %s pages; posting again", row.id, LOOKUP_PAGES)
        return None

    def _pace_channel(self, row: Outbox, channel: str) -> None:
        """Keep to about one post per second per channel; sleeping briefly is cheaper than
        a round trip through the database for such short waits."""
        wait = self._last_post.get(channel, -1e9) + self.tunables.channel_interval_s
        if (left := wait - time.monotonic()) > 0:
            time.sleep(left)
        self._last_post[channel] = time.monotonic()

    def _call(self, method: Any, **params: Any) -> Any:
        assert self.gate is not None
        name = method_name(method)
        wait, probe = self.gate.enter(name)
        if wait > 0:  # Slack said to wait (or another call is finding out): no call yet
            raise _Retry("ratelimited", wait, answered=True, rate_limited=True)
        limited_s: float | None = None
        ok = False
        try:
            answer = method(**params)
            ok = True
            return answer
        except SlackApiError as exc:
            response = exc.response
            error = str(response.get("error") or f"HTTP {response.status_code}")
            if response.status_code == 429 or error == "ratelimited":
                limited_s = _retry_after(response.headers)
                if limited_s is None:
                    limited_s = self.tunables.rate_limit_default_s
                metrics.SLACK_RATE_LIMITED.labels(name).inc()
                log.info("Slack rate limits %s: waiting %.1f s", name, limited_s)
                raise _Retry("ratelimited", limited_s, answered=True, rate_limited=True) from None
            ok = response.status_code < 500  # answered, and not rate limited
            if response.status_code >= 500:  # it may have been done before the failure
                raise _Retry(error, answered=False) from None
            if error in TRANSIENT_ERRORS:
                # Slack: with these two "some aspect of the operation" may have succeeded.
                done_maybe = error in {"internal_error", "fatal_error"}
                raise _Retry(error, answered=not done_maybe) from None
            raise _Permanent(error) from None
        except (OSError, TimeoutError) as exc:  # URLError, refused, reset, timed out
            raise _Retry(f"{type(exc).__name__}: {exc}", answered=False) from None
        finally:
            self.gate.leave(name, probe=probe, limited_s=limited_s, ok=ok)

    def _sent(self, row: Outbox) -> None:
        lag = (utcnow() - row.created_at).total_seconds()
        metrics.SLACK_LAG.labels(row.kind).observe(max(0.0, lag))

    def _retry(self, row: Outbox, task: Task | None, exc: _Retry) -> None:
        assert row.id is not None
        if exc.rate_limited:
            self._wait_out(row, task, exc)
            return
        if row.attempts + 1 >= self.tunables.max_attempts:
            error = f"{exc.error} (gave up after {row.attempts + 1} attempts)"
            self._fail(row, task, error, why="attempts")
            return
        metrics.SLACK_ERRORS.labels("transient").inc()
        t = self.tunables
        delay = (
            exc.after_s
            if exc.after_s is not None
            else min(t.backoff_max_s, t.backoff_base_s * 2**row.attempts)
        )
        at = utcnow() + timedelta(seconds=delay)
        log.info("outbox row %s: %s; retrying in %.1f s", row.id, exc.error, delay)
        self._settle(
            lambda s: outbox.retry_later(s, row.id, error=exc.error, at=at, not_sent=exc.not_sent)
        )

    def _wait_out(self, row: Outbox, task: Task | None, exc: _Retry) -> None:
        """Rate limited: try again when the gate opens, unless the row is too old by now."""
        assert row.id is not None
        age = (utcnow() - row.created_at).total_seconds()
        if age >= self.tunables.max_age_s:
            error = f"still rate limited {_duration(age)} after it was written"
            self._fail(row, task, error, why="too_old")
            return
        after = self.tunables.rate_limit_default_s if exc.after_s is None else exc.after_s
        at = utcnow() + timedelta(seconds=after)
        log.debug("outbox row %s: rate limited; waiting until %s", row.id, at)
        self._settle(lambda s: outbox.rate_limited(s, row.id, at=at, not_sent=exc.not_sent))

    def _fail(self, row: Outbox, task: Task | None, error: str, *, why: str = "refused") -> None:
        """Give the row up for good, visibly: a warning, the given-up metric (`why`: refused,
        attempts, too_old), the row's `given_up_at` (doctor) and the task's log."""
        assert row.id is not None
        metrics.SLACK_ERRORS.labels("permanent").inc()
        metrics.SLACK_GIVEN_UP.labels(why).inc()
        if task is None or task.id is None:  # a post: the row itself keeps the error
            log.warning("outbox row %s (%s): %s; given up", row.id, row.kind, error)
            self._settle(lambda s: outbox.give_up(s, row.id, error=error))
            return
        log.warning(
            "outbox row %s (%s) for task %s: %s; given up", row.id, row.kind, task.id, error
        )

        def settle(session: Any) -> None:
            outbox.give_up(session, row.id, error=error)
            record(
                session,
                task.id,
                "slack_error",
                {"kind": row.kind, "error": error, "channel": task.channel},
            )

        self._settle(settle)

    def _defer(self, row: Outbox, seconds: float) -> None:
        at = utcnow() + timedelta(seconds=max(0.0, seconds))
        self._settle(lambda s: outbox.defer(s, row.id, at=at))

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """Every notifier transaction queues with the HTTP workers' acks for SQLite's write
        lock (`writer_turn`): left to SQLite's busy handler, an ack that met one of ours
        slept in growing steps while holding its own writers' turn."""
        with writer_turn(self.engine), transaction(self.engine) as session:
            yield session

    def _settle(self, write: Any) -> None:
        with self._transaction() as session:
            write(session)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (Slack sends whole seconds), or None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _queue_files(session: Session, task_id: int) -> None:
    """The task parked for approval: its newest diff (and the interdiff, if it changed since
    an approval) goes to the thread as files, unless that diff was queued before (a park
    with no new work, such as a merge that failed, shares nothing again)."""
    newest = {
        kind: session.exec(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.kind == kind)
            .order_by(col(TaskEvent.id).desc())
        ).first()
        for kind in ("diff", "proof")
    }
    queued = session.exec(
        select(Outbox).where(Outbox.task_id == task_id, Outbox.kind == "file")
    ).all()
    done = {(r.payload.get("what"), r.payload.get("event")) for r in queued}
    diff, proof = newest["diff"], newest["proof"]
    if diff is not None and diff.id is not None and ("diff", diff.id) not in done:
        outbox.queue_file(session, task_id, what="diff", event_id=diff.id)
    if (
        proof is not None
        and proof.id is not None
        and proof.payload.get("since_approval")
        and ("interdiff", proof.id) not in done
    ):
        outbox.queue_file(session, task_id, what="interdiff", event_id=proof.id)
