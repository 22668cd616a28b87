"""Delivers the outbox to Slack: claims due rows and hands each to its kind's delivery
(task and plan cards, and the notes on re-posted ones: card_delivery.py; milestones,
reactions and messages of their own such as the digest: here; diff files: file_share.py).

Exactly once per row: the SDK's own retries are off (a resent post whose answer was lost
would appear twice); each row is claimed under a lease and settled in the transaction that
learns the result (a card's `ts` becomes the task's thread in that same step), and a post
whose answer was lost is looked for before posting again (exactly_once.py).

A 429 is not a failed attempt: the method's gate (shared by the process's workers, see
rate_gate.py) stays closed for Retry-After, and the row waits it out, however long, until it
is older than `max_age_s`; then it is given up visibly (a warning, a metric, `nightcrew
doctor`). A task's thread messages keep their order (storage/outbox.py). Other transient
failures (5xx, connection errors) are retried per row with backoff, a bounded number of
times; permanent ones are recorded on the row and in the task's log, and never retried
(retry_policy.py decides, delivery.py settles). A card Slack will no longer let us edit is
posted afresh and the task re-bound to it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlmodel import col, select

from bot.links import Signer
from bot.slack import blocks
from bot.slack.card_delivery import Cards
from bot.slack.delivery import Delivery, TakenOver
from bot.slack.exactly_once import post_once
from bot.slack.file_share import queue_files, share_file
from bot.slack.notifier_tunables import Tunables
from bot.slack.rate_gate import RateGate
from bot.slack.retry_policy import Permanent, Retry
from storage import outbox
from storage.lifecycle import CLOSED, State
from storage.models import Nudge, Outbox, Task, TaskEvent

log = logging.getLogger(__name__)

__all__ = ["Notifier", "Tunables"]


@dataclass
class Notifier:
    engine: Engine
    client: WebClient  # build with retry_handlers=[]: retries are ours, per row
    tunables: Tunables = field(default_factory=Tunables)
    signer: Signer | None = None  # page links (Open buttons, the diff file's comment)
    gate: RateGate | None = None  # None: the process's gate for this client's workspace
    _dms: dict[str, str] = field(default_factory=dict)  # user id -> the app's DM channel id

    def __post_init__(self) -> None:
        self._d = Delivery(self.engine, self.client, self.tunables, self.signer, self.gate)
        self.gate = self._d.gate
        self._cards = Cards(self._d)

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
        with self._d.transaction() as session:
            rows = outbox.claim_due(session, lease_s=self.tunables.lease_s)
        for row in rows:
            if stop is not None and stop.is_set():
                break
            try:
                self._d.hold(row)  # the batch's lease may have run out on the rows before
                self._deliver(row)
            except TakenOver as exc:
                log.info("%s: taken over by another notifier; leaving it to them", exc)
        return len(rows)

    def _deliver(self, row: Outbox) -> None:
        d = self._d
        assert row.id is not None
        with d.transaction() as session:
            task = session.get(Task, row.task_id) if row.task_id else None
            if task is not None:
                session.expunge(task)
        if row.kind in ("post", "plan", "plan_note"):  # not about one task: the digest, plans
            task = None
        elif task is None or not task.channel:
            d.give_up(row, "no task or channel")
            return
        try:
            if task is None and row.kind == "plan":
                self._cards.plan(row)
            elif task is None and row.kind == "plan_note":
                self._cards.plan_note(row)
            elif task is None:
                self._post(row)
            elif row.kind == "card":
                self._cards.card(row, task)
            elif row.kind == "state":
                self._state(row, task)
            elif row.kind == "note":
                self._cards.note(row, task)
            elif row.kind == "react":
                self._react(row, task)
            elif row.kind == "file":
                share_file(d, row, task)
            else:
                d.give_up(row, f"unknown {row.kind}")
        except TakenOver:
            raise  # not ours to settle any more
        except Retry as exc:
            d.retry(row, task, exc)
        except Permanent as exc:
            d.fail(row, task, str(exc))
        except Exception as exc:  # a bug must cost attempts, or the row loops forever
            log.exception("outbox row %s: unexpected error", row.id)
            d.retry(row, task, Retry(f"{type(exc).__name__}: {exc}", answered=False))

    def _post(self, row: Outbox) -> None:
        """A message of its own (the digest): `payload` has channel, text and blocks."""
        assert row.id is not None
        channel = str(row.payload.get("channel") or "")
        if not channel:
            raise Permanent("post without a channel")
        if channel.startswith(("U", "W")):  # a DM: its channel id, so a retry can look in it
            channel = self._dm(channel)
        post_once(
            self._d,
            row,
            channel,
            text=row.payload.get("text") or "",
            blocks=row.payload.get("blocks") or None,
        )
        self._d.sent(row)
        self._d.delivered(row)

    def _state(self, row: Outbox, task: Task) -> None:
        """A milestone in the task's thread (the proof pack with the one for review); the
        card is asked to show the new state too."""
        d = self._d
        assert row.id is not None and task.id is not None and task.channel
        if task.thread_ts is None:
            with d.transaction() as session:
                waiting = outbox.card_wait_s(session, task.id)
            if waiting is not None:  # the card (thread root) first
                d.defer(row, max(waiting, self.tunables.idle_poll_s))
                return
            # The card's own failure is already in the log; one line per milestone is noise.
            d.give_up(row, "no card, so no thread")
            return
        line = blocks.milestone(task, row.payload)
        if line is not None:
            extra = self._proof_blocks(task) if row.payload.get("to") == "awaiting_approval" else []
            post_once(
                d,
                row,
                task.channel,
                thread_ts=task.thread_ts,
                text=line,
                blocks=[blocks.section(line), *extra] if extra else None,
            )
            d.sent(row)

        def settle(session: Any) -> None:
            outbox.mark_delivered(session, row.id)
            outbox.request_card(session, task.id)  # the card shows the new state too
            if row.payload.get("to") == "awaiting_approval":
                queue_files(session, task.id)

        d.settle(settle)

    def _proof_blocks(self, task: Task) -> list[blocks.Block]:
        with self._d.transaction() as session:
            event = session.exec(
                select(TaskEvent)
                .where(TaskEvent.task_id == task.id, TaskEvent.kind == "proof")
                .order_by(col(TaskEvent.id).desc())
            ).first()
        return blocks.proof(event.payload) if event else []

    def _react(self, row: Outbox, task: Task) -> None:
        d = self._d
        assert row.id is not None and task.channel
        nudge_id = row.payload.get("after_nudge")
        if nudge_id is not None:
            with d.transaction() as session:
                nudge = session.get(Nudge, nudge_id)
                taken = nudge is None or nudge.consumed_at is not None
                withdrawn = nudge is not None and nudge.deleted_at is not None
            if withdrawn or (not taken and State(task.state) in CLOSED):  # nobody reads it: moot
                d.delivered(row)
                return
            if not taken:  # the agent reads nudges between turns; look again shortly
                d.defer(row, self.tunables.reaction_poll_s)
                return
        try:
            d.call(
                d.client.reactions_add,
                channel=task.channel,
                timestamp=row.payload["ts"],
                name=row.payload["name"],
            )
            d.sent(row)
        except Permanent as exc:
            if str(exc) != "already_reacted":  # reactions are idempotent: already done
                raise
        d.delivered(row)

    def _dm(self, user: str) -> str:
        """The app's DM channel with `user` (conversations.open, remembered). Without it
        (im:write not granted) the post goes to the user id, and a retry cannot look for it."""
        if user not in self._dms:
            try:
                answer = self._d.call(self._d.client.conversations_open, users=user)
            except Permanent as exc:
                log.warning("cannot open the DM with %s (%s); posting by user id", user, exc)
                return user
            self._dms[user] = str(answer["channel"]["id"])
        return self._dms[user]
