"""What the listeners do in the database, Slack-free: run an `/agent` command, take a reply
in a task's thread. Each runs in one transaction and returns what to tell the person."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import actions, plans, review, schedules
from bot.actions import ActionError, Outcome
from bot.links import Signer
from bot.slack import access, blocks, replies
from bot.slack import digest_send as digest
from bot.slack.commands import SCHEDULE_USAGE, Command, CommandError, parse
from executor.config.schema import Config, ConfigError
from executor.costs.budget import WAITING, Books
from executor.costs.plan_estimate import planning_refused
from storage import deliveries, digests, outbox
from storage.db import reading, transaction, writer_turn
from storage.errors import StorageError
from storage.lifecycle import IllegalTransition
from storage.models import Nudge, Plan, Task, TaskEvent, utcnow
from storage.queue import waiting_by_repo
from storage.schedules import list_schedules
from storage.tasks import (
    edit_nudge,
    get_task,
    record,
    round_goes_on,
    undo_requeue,
    withdraw_nudge,
)
from storage.text import clean

# What a person can get wrong; each becomes an ephemeral message and changes nothing.
USER_ERRORS = (ActionError, CommandError, ConfigError, StorageError, IllegalTransition)

# One writer at a time: SQLite's busy handler makes waiting writers sleep in growing steps
# (up to 100 ms), so a burst of acks contending for the write lock gets a long tail; a lock
# in the process, then one across the HTTP worker processes (`writer_turn`), queue them
# without sleeping. PostgreSQL does not need them, and they cost nothing there.
_WRITES = threading.Lock()


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    with _WRITES, writer_turn(engine), transaction(engine) as session:
        yield session


def thread_reply(
    engine: Engine,
    config: Config,
    channel: str,
    thread_ts: str,
    ts: str,
    user: str,
    text: str,
    attachments: str = "",
    files: list[dict[str, Any]] | None = None,
) -> Outcome | str | None:
    """A person's reply in a thread: a nudge (Outcome) if it is a task's thread and theirs to
    steer, a hint (str) if that task cannot take one or it is not theirs, None if it is not a
    task's thread or seen before (Slack redelivers events it thinks we missed).
    `attachments`: the reply's files as the agent gets them (`replies.files_note`); `files`:
    its files not fetched yet (`nudge_files.refs`), a task's only: a plan's thread gets None,
    and the files are read before planning again (`listeners`)."""
    try:
        return _thread_reply(engine, config, channel, thread_ts, ts, user, text, attachments, files)
    except IntegrityError:  # the same reply taken at once by another worker process: it has it
        return None


def _task_of_thread(session: Session, channel: str, thread_ts: str) -> Task | None:
    return session.exec(
        select(Task).where(Task.channel == channel, Task.thread_ts == thread_ts)
    ).first()


def _thread_reply(
    engine: Engine,
    config: Config,
    channel: str,
    thread_ts: str,
    ts: str,
    user: str,
    text: str,
    attachments: str,
    files: list[dict[str, Any]] | None,
) -> Outcome | str | None:
    with writing(engine) as session:
        task = _task_of_thread(session, channel, thread_ts)
        if task is None or task.id is None:
            if files:
                return None
            note = "\n\n".join(filter(None, [text.strip(), attachments]))
            return _plan_reply(session, config, channel, thread_ts, user, note)
        if session.exec(
            select(Nudge.id).where(Nudge.task_id == task.id, Nudge.slack_ts == ts)
        ).first():
            return None
        try:
            access.check_may_act(config, task, user, "nudge")
        except ActionError as exc:
            return str(exc)
        try:
            outcome = actions.nudge(
                session,
                task.id,
                text,
                actor=user,
                source="slack",
                slack_ts=ts,
                attachments=attachments,
                files=files,
            )
        except USER_ERRORS as exc:
            return f"{exc}. Start a new task with `/agent add …`."
        nudge_id = session.exec(
            select(Nudge.id).where(Nudge.task_id == task.id, Nudge.slack_ts == ts)
        ).one()
        # 👀 now, ✅ once the agent has it: through the outbox, so a restart loses neither.
        outbox.queue_reaction(session, task.id, ts, "eyes")
        outbox.queue_reaction(session, task.id, ts, "white_check_mark", after_nudge=nudge_id)
        return outcome


def may_steer(
    engine: Engine, config: Config, channel: str, thread_ts: str, user: str
) -> tuple[bool, str | None]:
    """Before fetching a reply's files: is this a thread whose replies nightcrew takes (a
    task's or a plan's), and if so, the refusal for `user` (None: they may steer it)."""
    with reading(engine) as session:
        task = _task_of_thread(session, channel, thread_ts)
        if task is None:
            plan = session.exec(
                select(Plan.id).where(Plan.channel == channel, Plan.thread_ts == thread_ts)
            ).first()
            if plan is None:
                return False, None
            try:
                access.check_member(config, user, "re-plan")
            except ActionError as exc:
                return True, str(exc)
            return True, None
        try:
            access.check_may_act(config, task, user, "nudge")
        except ActionError as exc:
            return True, str(exc)
        return True, None


ALREADY_READ = (
    "task {task}'s agent had already read your reply when you edited it, so it still has "
    "the first version; send the correction as a new reply"
)


def edited_reply(
    engine: Engine,
    config: Config,
    reply: replies.Reply,
) -> Outcome | str | None:
    """A reply edited in a task's thread. Not read by the agent yet: the edit replaces it
    (files it came with stay). Read already: say so (str). A reply that never became a
    nudge (refused, or sent before the thread was a task's): taken as a new reply."""
    with writing(engine) as session:
        task = _task_of_thread(session, reply.channel, reply.thread_ts)
        if task is None or task.id is None:
            return None
        nudge = session.exec(
            select(Nudge).where(Nudge.task_id == task.id, Nudge.slack_ts == reply.ts)
        ).first()
        if nudge is not None:
            if nudge.author != reply.user or nudge.id is None:
                return None
            typed = actions.clean_text(reply.text, what="nudge") if reply.text.strip() else ""
            before = clean(reply.previous_text).strip()
            if not before:  # a reply of files only: the text goes before them
                rest = "\n\n" + nudge.text
            elif nudge.text.startswith(before):  # what follows it: its files, if any
                rest = nudge.text[len(before) :]
            else:
                rest = ""
            text = (typed + rest).strip()
            if not text:
                return f"task {task.id}'s agent keeps your reply: an edit cannot empty it"
            if not edit_nudge(session, nudge.id, text, by=reply.user):
                return ALREADY_READ.format(task=task.id)
            return f"your edit replaces your reply to task {task.id}; its agent reads it next"
    return thread_reply(
        engine, config, reply.channel, reply.thread_ts, reply.ts, reply.user, reply.text
    )


GONE_BEFORE = "your deleted reply was withdrawn: task {task}'s agent will not see it"
BACK_TO = "; it had queued task {task} again, so the task is back to {state}, as before it"
GOES_ON = (
    "; task {task} had already started the round your reply asked for and finishes it "
    "without your words (it comes back to you when done; reply again to steer it)"
)
SEEN_BEFORE = (
    "task {task}'s agent had already read your reply when you deleted it; to take it back, "
    "send a new reply saying so"
)


def deleted_reply(engine: Engine, reply: replies.Reply) -> tuple[str, str, str] | None:
    """A reply deleted in Slack (found by its channel and ts: Slack's event need not name the
    thread). Not read by the agent yet: its nudge is withdrawn. Read already: its author is
    told. What to tell whom as (author, thread ts, text), or None when it was no nudge."""
    with writing(engine) as session:
        found = session.exec(
            select(Nudge, Task)
            .join(Task, col(Task.id) == col(Nudge.task_id))
            .where(Task.channel == reply.channel, Nudge.slack_ts == reply.ts)
        ).first()
        if found is None:
            return None
        nudge, task = found
        if nudge.id is None or nudge.deleted_at is not None:
            return None
        where = (nudge.author, task.thread_ts or "")
        if withdraw_nudge(session, nudge.id):
            outbox.drop_reactions(session, nudge.task_id, reply.ts)
            said = GONE_BEFORE.format(task=nudge.task_id)
            if (back := undo_requeue(session, nudge.task_id)) is not None:
                said += BACK_TO.format(task=nudge.task_id, state=back.value.replace("_", " "))
            elif round_goes_on(session, nudge.id):
                said += GOES_ON.format(task=nudge.task_id)
            return *where, said
        return *where, SEEN_BEFORE.format(task=nudge.task_id)


def unusable_reply(engine: Engine, reply: replies.Reply) -> str | None:
    """A message in a task's thread nightcrew cannot pass on: what to tell its author."""
    with reading(engine) as session:
        task = _task_of_thread(session, reply.channel, reply.thread_ts)
    if task is None:
        return None
    return replies.UNUSABLE.format(subtype=reply.subtype or "message", task=task.id)


def bot_in_thread(engine: Engine, reply: replies.Reply) -> None:
    """Another bot's message in a task's thread is not passed on; a reaction says so (an
    ephemeral message cannot reach a bot, and answering bots in words invites loops)."""
    with writing(engine) as session:
        task = _task_of_thread(session, reply.channel, reply.thread_ts)
        if task is not None and task.id is not None:
            outbox.queue_reaction(session, task.id, reply.ts, replies.BOT_REACTION)


def _plan_reply(
    session: Session, config: Config, channel: str, thread_ts: str, user: str, text: str
) -> str | None:
    """A reply on a plan's card: plan it again with that note (requester or approvers)."""
    plan = session.exec(
        select(Plan).where(Plan.channel == channel, Plan.thread_ts == thread_ts)
    ).first()
    if plan is None or plan.id is None:
        return None
    repo = config.repos.get(plan.repo)
    try:
        access.check_member(config, user, "re-plan")
        return plans.feedback(
            session, plan.id, text, actor=user, approvers=repo.approvers if repo else []
        )
    except USER_ERRORS as exc:
        return str(exc)


def once(
    engine: Engine, delivery: str | None, work: Callable[[Session], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Run `work` (which writes, and returns the reply) in one transaction, unless the Slack
    request `delivery` (see `delivery_key`) was acted on before: then (its reply, True). The
    key commits with the work, so a request whose work failed can be redelivered and done."""
    for attempt in range(2):
        try:
            with writing(engine) as session:
                if delivery is not None:
                    prior = deliveries.seen(session, delivery)
                    if prior is not None:
                        return prior, True
                reply = work(session)
                if delivery is not None:
                    deliveries.remember(session, delivery, reply)
                return reply, False
        except IntegrityError:
            # Another worker process acted on the same delivery at this very moment: ours is
            # rolled back; look again, and find its answer.
            if delivery is None or attempt:
                raise
    raise AssertionError("unreachable")


def press(
    engine: Engine,
    body: dict[str, Any],
    action: dict[str, Any],
    act: Callable[[Session, int, str], str],
) -> str | None:
    """A button whose value names a task or plan id: `act(session, id, actor)` once per
    Slack delivery (see `once`), its answer (Slack markup, the caller's to escape), or a
    refusal; None when an earlier delivery of the same press answered already."""
    actor = body["user"]["id"]
    try:
        target = actions.parse_task_id(str(action.get("value", "")))
        reply, again = once(engine, delivery_key(body), lambda s: {"text": act(s, target, actor)})
    except USER_ERRORS as exc:
        return f":no_entry: {blocks.escape(str(exc))}"
    return None if again else reply["text"]


def delivery_key(body: dict[str, Any]) -> str | None:
    """What makes a Slack request the same request when it comes again: an event's
    `event_id`; a slash command's, click's or modal submission's `trigger_id`."""
    if body.get("event_id"):
        return f"event:{body['event_id']}"
    if body.get("trigger_id"):
        return f"trigger:{body['trigger_id']}"
    return None


def run_command(
    engine: Engine,
    config: Config,
    command: dict[str, Any],
    *,
    event_ts: str | None = None,
    context: str | None = None,
    delivery: str | None = None,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """`/agent …` from `user_id` in `channel_id` -> the ephemeral reply (ack kwargs).
    `event_ts`: the mention's ts, so an event Slack redelivers adds no second task.
    `context`: earlier messages of the thread a mention came from, added to a new task.
    `delivery`: the request's `delivery_key`: a command that writes is done once per key,
    and a redelivery gets the first answer again."""
    cmd = parse(command.get("text", ""))
    if context and cmd.verb == "add":
        cmd = replace(cmd, prompt=f"{cmd.prompt}\n\n{context}")
    user, channel = command["user_id"], command["channel_id"]
    if cmd.verb == "help":
        return {"text": blocks.HELP}
    if cmd.verb != "add":  # add says it in its own words
        access.check_member(config, user)
    if cmd.verb == "repos":
        lines = [f"• `{name}` (base `{r.base_branch}`)" for name, r in config.repos.items()]
        here = config.channels.get(channel)
        return {"text": "\n".join(lines) + (f"\nthis channel's repo: `{here}`" if here else "")}
    if cmd.verb == "budget":
        books = Books.of(config)
        with transaction(engine) as session:  # a read: no need to queue for the write lock
            day, budgets = books.today(session)
            waiting = waiting_by_repo(session, marker=WAITING)
        return {"text": blocks.budget_text(day, budgets, waiting, configured=books.budgets.any)}
    if cmd.verb == "digest":
        return _digest(engine, config, cmd, user)
    if cmd.verb == "review":
        entries, links, queue = review_queue(engine, config, user, signer)
        return {"blocks": blocks.review_list(entries, links, queue), "text": "review queue"}
    if cmd.verb == "schedule" and cmd.action == "list":
        return _schedule_list(engine)
    if cmd.verb == "schedule":
        return once(engine, delivery, lambda s: _schedule(s, config, cmd, user, channel))[0]
    if cmd.verb in ("list", "show"):
        with writing(engine) as session:  # on SQLite every transaction takes the write lock
            return _look(session, cmd, user, channel)
    reply, again = once(engine, delivery, lambda s: _act(s, config, cmd, user, channel, event_ts))
    # A slash command's ack is its answer, so a redelivery gets it again; a mention's answer
    # is a message of its own, posted the first time.
    return {} if again and event_ts is not None else reply


def may_decide(config: Config, user: str) -> Callable[[Task], bool]:
    """Whether `user` may approve a task, by the rules of every button (bot/slack/access)."""

    def check(task: Task) -> bool:
        try:
            access.check_may_act(config, task, user, "approve")
        except USER_ERRORS:
            return False
        return True

    return check


def review_queue(
    engine: Engine, config: Config, user: str, signer: Signer | None
) -> tuple[list[review.Entry], dict[int, str], str | None]:
    """The tasks `user` may approve, riskiest first, with their page links and the queue's
    (`/agent review` and the App Home show the same list)."""
    with reading(engine) as session:
        entries = review.waiting(session, may_decide=may_decide(config, user))
    links = (
        {e.task.id: signer.task_url(e.task.id, user) for e in entries if e.task.id}
        if signer
        else {}
    )
    return entries, links, signer.review_url(user) if signer else None


def _look(session: Session, cmd: Command, user: str, channel: str) -> dict[str, Any]:
    if cmd.verb == "list":
        return {"blocks": _list(session, cmd.scope, user, channel), "text": "tasks"}
    assert cmd.task_id is not None
    task = get_task(session, cmd.task_id)
    access.check_may_see(task, user, channel)
    text, card = blocks.card(task)
    return {"text": text, "blocks": card}


def _act(
    session: Session, config: Config, cmd: Command, user: str, channel: str, event_ts: str | None
) -> dict[str, Any]:
    """add, retry, cancel."""
    if cmd.verb == "plan":
        access.check_member(config, user, "plan")
        repo = config.repo_for(cmd.repo, channel=channel)
        refused = planning_refused(session, Books.of(config), repo)
        if refused:
            raise ActionError(refused)
        plan = plans.request(session, repo=repo, spec=cmd.prompt, requester=user, channel=channel)
        return {"text": f"planning plan {plan.id} on {repo}; its card appears in this channel"}
    if cmd.verb == "add":
        if event_ts is not None and _seen_mention(session, channel, event_ts):
            return {}  # answered the first time
        outcome = _add(session, config, cmd, user, channel)
        if event_ts is not None:
            assert outcome.task.id is not None
            record(session, outcome.task.id, MENTION_EVENT, {"channel": channel, "ts": event_ts})
        return {"text": outcome.message}
    assert cmd.task_id is not None
    task = get_task(session, cmd.task_id)
    access.check_may_act(config, task, user, cmd.verb)
    if cmd.verb == "retry":
        return {"text": actions.retry(session, cmd.task_id, actor=user).message}
    approvers = access.approvers(config, task)
    outcome = actions.cancel(session, cmd.task_id, actor=user, approvers=approvers)
    return {"text": outcome.message}


def _digest(engine: Engine, config: Config, cmd: Command, user: str) -> dict[str, Any]:
    if cmd.action in ("subscribe", "unsubscribe"):
        with writing(engine) as session:
            if cmd.action == "subscribe":
                new = digests.subscribe(session, user)
            else:
                new = digests.unsubscribe(session, user)
        when = f"`{config.digest.cron}` ({config.digest.timezone})"
        if cmd.action == "subscribe":
            said = "you will get" if new else "you already get"
            return {"text": f"{said} the digest of your tasks by DM at {when}"}
        said = "you will no longer get" if new else "you were not getting"
        return {"text": f"{said} the digest by DM"}
    with writing(engine) as session:  # on SQLite every transaction takes the write lock
        requester = user if cmd.action == "mine" else None
        _, text, found = digest.on_demand(session, config, utcnow(), requester=requester)
    return {"text": text, "blocks": found}


def _schedule_list(engine: Engine) -> dict[str, Any]:
    with writing(engine) as session:
        found = list_schedules(session)
        now = utcnow()
        lines = [blocks.escape(schedules.describe(s, now)) for s in found]
    if not lines:
        return {"text": f"no schedules yet; {SCHEDULE_USAGE}"}
    return {"text": blocks.cut("*Schedules*\n" + "\n".join(f"• {line}" for line in lines))}


def _schedule(
    session: Session, config: Config, cmd: Command, user: str, channel: str
) -> dict[str, Any]:
    """add, pause, resume, delete."""
    if cmd.action == "add":
        access.check_member(config, user, "add tasks")
        added = schedules.add(
            session,
            config,
            cron=cmd.cron,
            prompt=cmd.prompt,
            creator=user,
            repo=cmd.repo,
            channel=channel,
            timezone=cmd.timezone,
        )
        return {"text": f"added schedule {blocks.escape(schedules.describe(added, utcnow()))}"}
    assert cmd.schedule_id is not None
    if cmd.action == "delete":
        said = schedules.delete(session, config, cmd.schedule_id, actor=user)
    else:
        paused = cmd.action == "pause"
        said = schedules.pause(session, config, cmd.schedule_id, actor=user, paused=paused)
    return {"text": blocks.escape(said)}


MENTION_EVENT = "slack_mention"  # the mention a task came from, to spot redeliveries


def _seen_mention(session: Session, channel: str, ts: str) -> bool:
    """Redeliveries come within minutes, so the last few hundred mentions are enough, and
    comparing in Python keeps the query the same on SQLite and PostgreSQL (JSON payload)."""
    recent = session.exec(
        select(TaskEvent)
        .where(TaskEvent.kind == MENTION_EVENT)
        .order_by(col(TaskEvent.id).desc())
        .limit(500)
    ).all()
    return any(e.payload == {"channel": channel, "ts": ts} for e in recent)


def is_task_thread(engine: Engine, channel: str, thread_ts: str) -> bool:
    with transaction(engine) as session:
        found = session.exec(
            select(Task.id).where(Task.channel == channel, Task.thread_ts == thread_ts)
        ).first()
    return found is not None


def thread_context(messages: list[dict[str, Any]], *, before_ts: str, limit: int = 8000) -> str:
    """The thread's earlier messages by people, oldest first, as context for a new task;
    the newest are kept when there is too much."""
    lines = [
        f"<@{m.get('user', '?')}>: {m.get('text', '').strip()}"
        for m in messages
        if not m.get("bot_id") and m.get("ts", "") < before_ts and m.get("text", "").strip()
    ]
    text = "\n".join(lines)
    if len(text) > limit:
        text = "…" + text[-limit:]
    return f"Context: the Slack thread this was asked in:\n{text}" if text else ""


def _add(session: Session, config: Config, cmd: Command, user: str, channel: str) -> Outcome:
    access.check_member(config, user, "add tasks")
    issue = actions.from_issue(config, cmd.prompt, cmd.repo)  # fetched when it runs
    repo = issue[0] if issue else config.repo_for(cmd.repo, channel=channel)
    return actions.add(
        session,
        repo=repo,
        prompt=cmd.prompt,
        requester=user,
        priority=cmd.priority,
        source="slack",
        channel=channel,
        issue_url=issue[1] if issue else None,
        after=cmd.after,
    )


def _list(session: Session, scope: str, user: str, channel: str) -> list[blocks.Block]:
    """Whatever the scope, only what this place shows (`access.visible`): `all` is every task
    of this channel, or all your own in a DM."""
    query = (
        select(Task)
        .where(access.visible(user, channel))
        .order_by(col(Task.id).desc())
        .limit(blocks.MAX_BLOCKS - 2)
    )
    if scope == "mine":
        query = query.where(Task.requester == user)
    dm = access.is_dm(channel)
    heading = {
        "mine": "Your tasks" if dm else "Your tasks in this channel",
        "channel": "Your tasks" if dm else "Tasks in this channel",
        "all": "All your tasks" if dm else "All tasks in this channel",
    }
    return blocks.task_list(session.exec(query).all(), heading[scope])
