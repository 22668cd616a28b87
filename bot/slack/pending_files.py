"""The files of replies whose nudge was written before the ack: fetched after it, and again
by the bot after a restart for any it never finished (the process died in between; Slack
does not send an acked event again).

A fetch and its completion are apart: the files are read with no transaction open, then one
conditional write joins their content to the nudge (`storage.tasks.complete_nudge_files`), so
two fetches of the same files (the listener and the recovery, or two bot processes) put them
in once, and a nudge the agent took or a reply deleted meanwhile stays as it is."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine
from sqlmodel import col, select

from bot.slack import blocks, replies, reply_files
from bot.slack.handle import writing
from storage.db import reading
from storage.models import Nudge, Task, utcnow
from storage.tasks import awaiting_files, complete_nudge_files

log = logging.getLogger(__name__)
RECOVER_EVERY_S = 10.0  # how often the bot looks for files nobody is fetching
# A nudge this old still waiting for its files has lost its fetcher (a fetch takes seconds);
# at start every waiting one is taken: the process that wrote it is gone.
ORPHANED_AFTER_S = 30.0


def complete(engine: Engine, client: WebClient, nudge_id: int, *, cap: int) -> str | None:
    """Fetch the files of nudge `nudge_id` and join them to it; what to tell its author
    about files the agent does not get (None: nothing to say, or the nudge was taken)."""
    with reading(engine) as session:
        nudge = session.get(Nudge, nudge_id)
        files = list(nudge.files or []) if nudge is not None and nudge.files_pending else None
    if files is None:
        return None
    attached = reply_files.fetch_all(client, files, cap=cap)
    with writing(engine) as session:
        if not complete_nudge_files(session, nudge_id, replies.files_note(attached)):
            return None
    return replies.not_passed(attached)


def complete_reply(
    engine: Engine, client: WebClient, channel: str, ts: str, *, cap: int
) -> str | None:
    """The files of reply `ts` in `channel`, if its nudge still waits for them."""
    with reading(engine) as session:
        nudge_id = session.exec(
            select(Nudge.id)
            .join(Task, col(Task.id) == col(Nudge.task_id))
            .where(Task.channel == channel, Nudge.slack_ts == ts, col(Nudge.files_pending))
        ).first()
    if nudge_id is None:
        return None
    return complete(engine, client, nudge_id, cap=cap)


def recover(engine: Engine, client: WebClient, *, cap: int, older_than_s: float) -> int:
    """Fetch the files of every nudge waiting for them longer than `older_than_s`; each
    author is told as after the ack. The number of nudges looked at."""
    with reading(engine) as session:
        waiting = awaiting_files(session, before=utcnow() - timedelta(seconds=older_than_s))
    for nudge_id, author, channel, thread_ts in waiting:
        told = complete(engine, client, nudge_id, cap=cap)
        log.info("fetched the files of nudge %s again", nudge_id)
        if told and channel:
            try:
                client.chat_postEphemeral(
                    channel=channel, user=author, thread_ts=thread_ts, text=blocks.escape(told)
                )
            except SlackApiError as exc:  # the person left the channel: the agent still has it
                log.warning("could not tell %s about nudge %s: %s", author, nudge_id, exc)
    return len(waiting)


def keep_recovering(
    engine: Engine, client: WebClient, stop: threading.Event, *, cap: int, every_s: float
) -> None:
    """Recover at once (the catch-up after a restart), then every `every_s` seconds."""
    older_than = 0.0
    while True:
        try:
            recover(engine, client, cap=cap, older_than_s=older_than)
            older_than = ORPHANED_AFTER_S
        except Exception:  # a database or Slack hiccup must not end recovery for good
            log.exception("fetching waiting reply files failed; trying again")
        if stop.wait(every_s):
            return
