"""Cards in Slack: a task's card posted (its ts becomes the task's thread) or edited to show
the task as it is now, at most one edit per task every few seconds (newer card rows replace
a waiting one); a plan's card the same way (a newer pending plan row makes an older one
moot). A card Slack will no longer let us edit, a task's or a plan's, is posted afresh, in
its thread, or as a new thread when the old one is gone, the task or plan re-bound to it
(`card_ts`, or a new `thread_ts`), and a short note in the thread says why."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from bot.slack import blocks
from bot.slack.delivery import Delivery
from bot.slack.exactly_once import post_once
from bot.slack.plan_blocks import plan_card
from bot.slack.retry_policy import Permanent, card_gone, edit_refused
from storage import outbox
from storage.models import Outbox, Plan, Task
from storage.plans import plan_tasks
from storage.spend import spent_on_plan

log = logging.getLogger("bot.slack.notifier")  # one logger for all of the notifier


@dataclass
class Cards:
    d: Delivery
    _last_edit: dict[int, float] = field(default_factory=dict)  # task id -> monotonic time

    def card(self, row: Outbox, task: Task) -> None:
        d = self.d
        assert row.id is not None and task.id is not None and task.channel
        text, card = blocks.card(task, open_url=d.task_page(task))
        if task.thread_ts is None:
            ts, adopted = post_once(d, row, task.channel, text=text, blocks=card)

            def posted(session: Any) -> None:
                outbox.card_posted(session, row.id, task.id, ts)
                if adopted:  # it shows the task as it was then: edit it to now
                    outbox.request_card(session, task.id)

            d.sent(row)
            d.settle(posted)
            self._last_edit[task.id] = time.monotonic()
            return
        wait = self._last_edit.get(task.id, -1e9) + d.tunables.card_edit_interval_s
        if time.monotonic() < wait:  # coalesce: the row waits, newer ones replace it
            d.defer(row, wait - time.monotonic())
            return
        refused = self._edit(task.channel, task.card_ts or task.thread_ts, text, card)
        if refused is not None:
            self._repost(row, task, text, card, refused)
            return
        d.sent(row)
        self._last_edit[task.id] = time.monotonic()
        d.delivered(row)

    def _edit(
        self, channel: str, ts: str | None, text: str, card: list[blocks.Block]
    ) -> str | None:
        """Edit a card in place; Slack's reason when it will not let us any more (the
        caller posts a fresh one), else None. Other refusals raise as any call's do."""
        try:
            self.d.call(self.d.client.chat_update, channel=channel, ts=ts, text=text, blocks=card)
        except Permanent as exc:
            if not edit_refused(str(exc)):
                raise
            return str(exc)
        return None

    def _post_afresh(
        self,
        row: Outbox,
        what: str,
        channel: str,
        thread_ts: str,
        in_thread: bool,
        text: str,
        card: list[blocks.Block],
        why: str,
    ) -> tuple[str, bool, bool]:
        """Post a fresh card for `what` ("task 4", "plan 2") in its thread, or as a new
        thread when the old root is gone; (its ts, whether an earlier post was adopted,
        whether it started a new thread)."""
        gone = card_gone(why, in_thread=in_thread)
        log.warning(
            "%s: its card cannot be edited (%s); posting a fresh one %s",
            what,
            why,
            "as a new thread" if gone else "in its thread",
        )
        where = {} if gone else {"thread_ts": thread_ts}
        ts, adopted = post_once(self.d, row, channel, text=text, blocks=card, **where)
        return ts, adopted, gone

    def _repost(
        self, row: Outbox, task: Task, text: str, card: list[blocks.Block], why: str
    ) -> None:
        """Slack will not let us edit the card any more (`why`): post a fresh one in its
        thread, or as a new thread when the old one is gone (the card was the thread's root
        and is not found), re-bind the task to it, and say why in the thread."""
        d = self.d
        assert row.id is not None and task.id is not None and task.channel and task.thread_ts
        ts, adopted, gone = self._post_afresh(
            row,
            f"task {task.id}",
            task.channel,
            task.thread_ts,
            task.card_ts is not None,
            text,
            card,
            why,
        )

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

        d.sent(row)
        d.settle(moved)
        self._last_edit[task.id] = time.monotonic()

    def note(self, row: Outbox, task: Task) -> None:
        """A short line in the task's thread: why a fresh card was posted, or that the agent
        took a reply without its files."""
        d = self.d
        assert row.id is not None and task.channel
        if task.thread_ts is None:
            d.give_up(row, "no thread")
            return
        missed = row.payload.get("files_missed")
        if isinstance(missed, dict):
            author, files = str(missed.get("author") or ""), missed.get("files") or []
            line = blocks.files_missed(task, author, files)
        else:
            line = blocks.card_moved(
                f"Task {task.id}",
                str(row.payload.get("card_moved") or ""),
                fresh_root=task.card_ts is None,
                continues="the task's messages continue here",
            )
        post_once(d, row, task.channel, thread_ts=task.thread_ts, text=line)
        d.sent(row)
        d.delivered(row)

    def plan(self, row: Outbox) -> None:
        """Post the plan's card (its ts becomes the plan's thread) or edit it to show the plan
        as it is now; a row with a newer one pending for the same plan is settled unsent."""
        d = self.d
        assert row.id is not None
        plan_id = int(row.payload.get("plan_id") or 0)
        with d.transaction() as session:
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
            d.give_up(row, "no plan or channel")
            return
        if newer:  # that one shows the plan as it is now
            d.delivered(row)
            return
        channel = plan.channel
        links = {
            t.id: f"https://slack.com/archives/{t.channel}/p{t.thread_ts.replace('.', '')}"
            for t in tasks
            if t.id is not None and t.channel and t.thread_ts
        }
        page = d.signer.plan_url(plan_id, f"channel:{channel}") if d.signer else None
        text, card = plan_card(plan, tasks, links=links, page=page, planning=planning)
        if plan.thread_ts is None:
            ts, adopted = post_once(d, row, channel, text=text, blocks=card)

            def posted(session: Any) -> None:
                stored = session.get(Plan, plan_id)
                if stored is not None and stored.thread_ts is None:
                    stored.thread_ts = ts
                    session.add(stored)
                outbox.mark_delivered(session, row.id)
                if adopted:  # it shows the plan as it was then: edit it to now
                    session.add(Outbox(kind="plan", payload={"plan_id": plan_id}))

            d.sent(row)
            d.settle(posted)
            return
        refused = self._edit(channel, plan.card_ts or plan.thread_ts, text, card)
        if refused is not None:
            self._repost_plan(row, plan, text, card, refused)
            return
        d.sent(row)
        d.delivered(row)

    def _repost_plan(
        self, row: Outbox, plan: Plan, text: str, card: list[blocks.Block], why: str
    ) -> None:
        """As `_repost`, for a plan's card: a fresh one in the plan's thread (or as a new
        thread when the old root is gone), the plan re-bound to it, a note saying why."""
        d = self.d
        assert row.id is not None and plan.id is not None and plan.channel and plan.thread_ts
        plan_id, thread_ts = plan.id, plan.thread_ts
        ts, adopted, gone = self._post_afresh(
            row,
            f"plan {plan_id}",
            plan.channel,
            thread_ts,
            plan.card_ts is not None,
            text,
            card,
            why,
        )

        def moved(session: Any) -> None:
            outbox.plan_card_moved(
                session,
                row.id,
                plan_id,
                thread_ts=ts if gone else thread_ts,
                card_ts=None if gone else ts,
                why=why,
            )
            if adopted:  # it shows the plan as it was then: edit it to now
                session.add(Outbox(kind="plan", payload={"plan_id": plan_id}))

        d.sent(row)
        d.settle(moved)

    def plan_note(self, row: Outbox) -> None:
        """A short line in the plan's thread: why a fresh plan card was posted."""
        d = self.d
        assert row.id is not None
        with d.transaction() as session:
            plan = session.get(Plan, int(row.payload.get("plan_id") or 0))
            if plan is not None:
                session.expunge(plan)
        if plan is None or not plan.channel or plan.thread_ts is None:
            d.give_up(row, "no plan thread")
            return
        line = blocks.card_moved(
            f"Plan {plan.id}",
            str(row.payload.get("card_moved") or ""),
            fresh_root=plan.card_ts is None,
            continues="reply here to plan again",
        )
        post_once(d, row, plan.channel, thread_ts=plan.thread_ts, text=line)
        d.sent(row)
        d.delivered(row)
