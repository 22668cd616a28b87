"""The Bolt listeners, thin: parse -> check permission -> one write -> ack. Nothing calls
Slack before the ack; replies that need the Web API (modals, ephemerals by response_url)
come after it, in lazy listeners. The database side is in `handle`; delivery of cards,
milestones and reactions is the notifier's job."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot import actions
from bot.links import Signer
from bot.slack import access, blocks, pending_files, plan_listeners, replies, reply_files
from bot.slack.handle import (
    USER_ERRORS,
    bot_in_thread,
    deleted_reply,
    delivery_key,
    edited_reply,
    is_task_thread,
    may_steer,
    once,
    press,
    review_queue,
    run_command,
    thread_context,
    thread_reply,
    unusable_reply,
    writing,
)
from executor.config.schema import Config
from storage import nudge_files
from storage.models import TaskEvent
from storage.tasks import get_task, list_tasks

MENTION = re.compile(r"<@[A-Z0-9]+>\s*")
DECIDE = {
    blocks.APPROVE: actions.approve,
    blocks.REJECT: actions.reject,
    blocks.CANCEL: actions.cancel,
}
# What each button or modal does, in the words of a refusal ("… may approve it").
VERBS = {
    blocks.APPROVE: "approve",
    blocks.REJECT: "reject",
    blocks.CANCEL: "cancel",
    blocks.RETRY: "retry",
    blocks.CHANGES: "request changes on",
    blocks.NUDGE: "nudge",
    blocks.CHANGES_MODAL: "request changes on",
    blocks.NUDGE_MODAL: "nudge",
}


def register(
    app: App,
    engine: Engine,
    config: Callable[[], Config],
    signer: Signer | None = None,
    *,
    file_max_bytes: int = 100_000,
) -> None:
    """Attach every listener to `app`; `config` is read per request (cheap, cached).

    The app runs with `process_before_response`: each ack function below runs in the request
    and its ack is the answer (no polling for it); anything that calls Slack afterwards is a
    lazy function, started once the ack is out. An ack function leaves what its lazy
    follow-up needs in `context["reply"]` (Bolt copies the context for lazy functions)."""

    def may_act(session: Session, task_id: int, user: str, what: str) -> None:
        """Checked against the task as stored: a payload can name any task id."""
        access.check_may_act(config(), get_task(session, task_id), user, VERBS[what])

    def just_ack(ack: Ack) -> None:
        ack()

    def reply_ephemerally(context: BoltContext, respond: Respond) -> None:
        if context.get("reply"):
            respond(text=context["reply"], response_type="ephemeral", replace_original=False)

    @app.command("/agent")
    def agent(ack: Ack, command: dict[str, Any]) -> None:
        try:
            ack(
                **run_command(
                    engine, config(), command, delivery=delivery_key(command), signer=signer
                )
            )
        except USER_ERRORS as exc:
            ack(text=f":warning: {blocks.escape(str(exc))}")

    def decide(
        ack: Ack, action: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        def act(session: Session, task_id: int, actor: str) -> str:
            may_act(session, task_id, actor, action["action_id"])
            if action["action_id"] == blocks.RETRY:
                return actions.retry(session, task_id, actor=actor).message
            verb = DECIDE[action["action_id"]]
            task = get_task(session, task_id)
            approvers = access.approvers(config(), task)
            options: dict[str, Any] = {"approvers": approvers}
            repo = config().repos.get(task.repo)
            if verb is actions.approve and repo is not None:
                options["base"] = repo.base_branch  # "… merges into main next"
            return verb(session, task_id, actor=actor, **options).message

        context["reply"] = press(engine, body, action, act)
        ack()

    app.action(re.compile(f"^({'|'.join(DECIDE)}|{blocks.RETRY})$"))(
        ack=decide, lazy=[reply_ephemerally]
    )

    def check_note(
        ack: Ack, action: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        """Only someone who may steer the task gets the modal to type a note into."""
        try:
            task_id = actions.parse_task_id(str(action.get("value", "")))
            with writing(engine) as session:
                may_act(session, task_id, body["user"]["id"], action["action_id"])
            context["task_id"] = task_id
        except USER_ERRORS as exc:
            context["reply"] = f":no_entry: {blocks.escape(str(exc))}"
        ack()

    def open_note(
        action: dict[str, Any],
        body: dict[str, Any],
        client: WebClient,
        context: BoltContext,
        respond: Respond,
    ) -> None:
        task_id = context.get("task_id")
        if task_id is None:
            reply_ephemerally(context, respond)
            return
        if action["action_id"] == blocks.CHANGES:
            view = blocks.note_modal(
                blocks.CHANGES_MODAL,
                task_id,
                title="Request changes",
                label=f"What should change in task {task_id}?",
            )
        else:
            view = blocks.note_modal(
                blocks.NUDGE_MODAL,
                task_id,
                title=f"Nudge task {task_id}",
                label="What should the agent know?",
            )
        client.views_open(trigger_id=body["trigger_id"], view=view)

    app.action(re.compile(f"^({blocks.CHANGES}|{blocks.NUDGE})$"))(ack=check_note, lazy=[open_note])

    def diffstat(action: dict[str, Any], body: dict[str, Any], respond: Respond) -> None:
        try:
            task_id = actions.parse_task_id(str(action.get("value", "")))
            with writing(engine) as session:
                # Where the click came from: a channel's card, a DM, or the App Home (none).
                channel = (body.get("channel") or {}).get("id")
                task = get_task(session, task_id)
                access.check_may_see_proof(config(), task, body["user"]["id"], channel)
                proof = session.exec(
                    select(TaskEvent)
                    .where(TaskEvent.task_id == task_id, TaskEvent.kind == "proof")
                    .order_by(col(TaskEvent.id).desc())
                ).first()
        except USER_ERRORS as exc:
            respond(
                text=f":no_entry: {blocks.escape(str(exc))}",
                response_type="ephemeral",
                replace_original=False,
            )
            return
        stat = (proof.payload.get("diff_stat") if proof else None) or "no diff stat recorded"
        respond(
            text=blocks.cut(f"```{blocks.escape(str(stat))}```"),
            response_type="ephemeral",
            replace_original=False,
        )

    app.action(blocks.DIFFSTAT)(ack=just_ack, lazy=[diffstat])
    # A link button (Open) opens its page in the browser; Slack still tells the app.
    app.action(blocks.OPEN)(just_ack)

    @app.view(re.compile(f"^({blocks.CHANGES_MODAL}|{blocks.NUDGE_MODAL})$"))
    def submit_note(ack: Ack, view: dict[str, Any], body: dict[str, Any]) -> None:
        text = view["state"]["values"][blocks.NOTE_BLOCK][blocks.NOTE_INPUT].get("value") or ""

        def note(session: Session) -> dict[str, Any]:
            may_act(session, task_id, body["user"]["id"], view["callback_id"])
            actor = body["user"]["id"]
            outcome = actions.nudge(session, task_id, text, actor=actor, source="slack")
            return {"text": outcome.message}

        try:
            task_id = actions.parse_task_id(view.get("private_metadata", ""))
            once(engine, delivery_key(body), note)
        except USER_ERRORS as exc:  # shown under the text box; the modal stays open
            ack(response_action="errors", errors={blocks.NOTE_BLOCK: str(exc)[:150]})
            return
        ack()

    def message(ack: Ack, event: dict[str, Any], context: BoltContext) -> None:
        """Every kind of reply in a task's thread: plain, "Also send to channel", with files,
        edited. What nightcrew cannot use gets an answer (an ephemeral message, or for a
        bot a reaction), never silence; the app's own messages get nothing (no loops)."""
        ack()  # an event's ack carries nothing; the write below is what matters
        reply = replies.classify(event, own_bot_id=context.bot_id, own_user=context.bot_user_id)
        answer: Any = None
        if reply.kind == "reply":
            # A reply with files is written now with what Slack said of them; their content
            # is fetched after the ack (a Slack call) and joins it (`_take_files`).
            refs = nudge_files.refs(reply.files) if reply.files else None
            answer = thread_reply(
                engine,
                config(),
                reply.channel,
                reply.thread_ts,
                reply.ts,
                reply.user,
                reply.text,
                files=refs,
            )
            context["files"] = bool(refs) and not isinstance(answer, str)
        elif reply.kind == "deleted":
            told = deleted_reply(engine, reply)
            if told is not None:
                context["reply_user"], context["reply_thread"], answer = told
        elif reply.kind == "edit":
            try:
                answer = edited_reply(engine, config(), reply)
            except USER_ERRORS as exc:
                answer = str(exc)
        elif reply.kind == "unusable":
            answer = unusable_reply(engine, reply)
        elif reply.kind == "bot":
            bot_in_thread(engine, reply)
        if isinstance(answer, str):
            context["reply"] = blocks.escape(answer)

    def hint_in_thread(event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        if context.get("files"):
            _take_files(event, context, client)
        if context.get("reply"):
            where = event.get("message") or event  # an edit's thread is in its message
            client.chat_postEphemeral(
                channel=event["channel"],
                user=context.get("reply_user") or where["user"],
                thread_ts=context.get("reply_thread") or where.get("thread_ts"),
                text=context["reply"],
            )

    def _take_files(event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        """A reply with files: in a task's thread its nudge is written already and waits for
        them (fetched here, text files up to the cap); in a plan's they are fetched, then it
        is planned again with them."""
        reply = replies.classify(event, own_bot_id=context.bot_id, own_user=context.bot_user_id)
        if is_task_thread(engine, reply.channel, reply.thread_ts):
            told = pending_files.complete_reply(
                engine, client, reply.channel, reply.ts, cap=file_max_bytes
            )
            if told:
                context["reply"] = blocks.escape(told)
            return
        cfg = config()
        ours, refusal = may_steer(engine, cfg, reply.channel, reply.thread_ts, reply.user)
        if not ours or refusal:
            if refusal:
                context["reply"] = blocks.escape(refusal)
            return
        attached = reply_files.fetch_all(client, reply.files, cap=file_max_bytes)
        note = replies.files_note(attached)
        args = (reply.channel, reply.thread_ts, reply.ts, reply.user, reply.text)
        answer = thread_reply(engine, cfg, *args, attachments=note)
        said = [answer] if isinstance(answer, str) else []
        if answer is not None and not isinstance(answer, str):
            said += filter(None, [replies.not_passed(attached)])
        if said:
            context["reply"] = blocks.escape("\n".join(said))

    app.event("message")(ack=message, lazy=[hint_in_thread])

    def mention(
        ack: Ack, event: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        ack()
        thread = event.get("thread_ts")
        if thread and is_task_thread(engine, event["channel"], thread):
            return  # a reply to a task: the message listener has it (once)
        if thread:  # a new task from a thread: its messages are read after the ack
            context["from_thread"] = thread
            return
        context["reply"] = _mention_command(event, None, delivery_key(body))

    def _mention_command(
        event: dict[str, Any], thread_text: str | None, delivery: str | None
    ) -> dict[str, Any]:
        prompt = MENTION.sub("", event.get("text", "")).strip()
        command = {
            "text": prompt or "help",
            "user_id": event["user"],
            "channel_id": event["channel"],
        }
        try:
            return run_command(
                engine,
                config(),
                command,
                event_ts=event.get("ts"),
                context=thread_text,
                delivery=delivery,
                signer=signer,
            )
        except USER_ERRORS as exc:
            return {"text": f":warning: {blocks.escape(str(exc))}"}

    def answer_mention(
        event: dict[str, Any], body: dict[str, Any], context: BoltContext, client: WebClient
    ) -> None:
        if context.get("from_thread"):
            replies = client.conversations_replies(
                channel=event["channel"], ts=context["from_thread"], limit=100
            )
            earlier = thread_context(replies.get("messages") or [], before_ts=event["ts"])
            context["reply"] = _mention_command(event, earlier, delivery_key(body))
        if context.get("reply"):
            client.chat_postEphemeral(
                channel=event["channel"], user=event["user"], **context["reply"]
            )

    app.event("app_mention")(ack=mention, lazy=[answer_mention])

    def home(event: dict[str, Any], client: WebClient) -> None:
        user = event["user"]
        with writing(engine) as session:
            mine = list_tasks(session, requester=user, include_closed=True, limit=30)
        # What waits for this person's approval, in the review queue's order (the same
        # ranking as `/agent review`, `nightcrew review` and the /review page).
        entries, links, queue = review_queue(engine, config(), user, signer)
        ranked = [e.task for e in entries]
        shown = {t.id for t in ranked}
        groups = [
            ("Running", [t for t in mine if t.state.value not in _DONE + _WAIT]),
            ("Waiting for your approval", ranked),
            ("Waiting for your input", [t for t in mine if t.state.value == "needs_input"]),
            ("Recent", [t for t in mine if t.state.value in _DONE][:10]),
        ]
        if signer is not None:
            for task in mine:
                if task.id is not None and task.id not in shown:
                    links[task.id] = signer.task_url(task.id, user)
        reasons = {e.task.id: e.why for e in entries if e.task.id is not None}
        view = blocks.home(groups, links=links, reasons=reasons, review_url=queue)
        client.views_publish(user_id=user, view=view)

    app.event("app_home_opened")(ack=just_ack, lazy=[home])
    plan_listeners.register(app, engine, config)


_WAIT = ("awaiting_approval", "needs_input")
_DONE = ("merged", "cancelled", "rejected", "failed")
