"""Bolt listeners for plans and dependencies: the plan card's Queue all and Discard, and a
parked dependent's Run anyway. As in listeners.py: parse -> permission (against the plan or
task as stored, never the ids a payload carries) -> one write, once per delivery -> ack; the
answer is an ephemeral message after the ack."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlmodel import Session

from bot import actions, plans
from bot.actions import ActionError
from bot.slack import access, blocks
from bot.slack.handle import USER_ERRORS, delivery_key, once, press, writing
from bot.slack.plan_blocks import (
    DISCARD,
    EDIT,
    EDIT_MODAL,
    MAX_INPUT,
    PLAN_BLOCK,
    PLAN_INPUT,
    QUEUE_ALL,
    edit_modal,
)
from executor.config.schema import Config
from storage.plans import get_plan
from storage.tasks import get_task


def register(app: App, engine: Engine, config: Callable[[], Config]) -> None:
    def reply_ephemerally(context: BoltContext, respond: Respond) -> None:
        if context.get("reply"):
            respond(text=context["reply"], response_type="ephemeral", replace_original=False)

    def on_plan(
        ack: Ack, action: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        def act(session: Session, plan_id: int, actor: str) -> str:
            plan = get_plan(session, plan_id)
            verb = "queue" if action["action_id"] == QUEUE_ALL else "discard"
            access.check_member(config(), actor, f"{verb} plans")
            repo = config().repos.get(plan.repo)
            approvers = repo.approvers if repo else []
            do = plans.queue_all if action["action_id"] == QUEUE_ALL else plans.discard
            return blocks.escape(do(session, plan_id, actor=actor, approvers=approvers))

        context["reply"] = press(engine, body, action, act)
        ack()

    app.action(re.compile(f"^({QUEUE_ALL}|{DISCARD})$"))(ack=on_plan, lazy=[reply_ephemerally])

    def run_anyway(
        ack: Ack, action: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        def act(session: Session, task_id: int, actor: str) -> str:
            task = get_task(session, task_id)
            access.check_may_act(config(), task, actor, "run anyway")
            approvers = access.approvers(config(), task)
            outcome = actions.run_anyway(session, task_id, actor=actor, approvers=approvers)
            return blocks.escape(outcome.message)

        context["reply"] = press(engine, body, action, act)
        ack()

    app.action(blocks.RUN_ANYWAY)(ack=run_anyway, lazy=[reply_ephemerally])

    def check_edit(
        ack: Ack, action: dict[str, Any], body: dict[str, Any], context: BoltContext
    ) -> None:
        """Only someone who may decide on the plan gets the modal, and only for a proposal
        short enough for Slack's text box."""
        try:
            plan_id = actions.parse_task_id(str(action.get("value", "")))
            with writing(engine) as session:
                plan = get_plan(session, plan_id)
                may_decide(session, plan_id, body["user"]["id"], "edit")
                if plan.status != "proposed":
                    raise ActionError(f"plan {plan_id} is {plan.status}; only a proposal is edited")
                text = plans.edit_text(plan)
            if len(text) > MAX_INPUT:
                raise ActionError(
                    f"plan {plan_id} is too long to edit in Slack; reply in its thread instead"
                )
            context["modal"] = edit_modal(plan_id, text)
        except USER_ERRORS as exc:
            context["reply"] = f":no_entry: {blocks.escape(str(exc))}"
        ack()

    def open_edit(
        body: dict[str, Any], client: WebClient, context: BoltContext, respond: Respond
    ) -> None:
        if context.get("modal") is None:
            reply_ephemerally(context, respond)
            return
        client.views_open(trigger_id=body["trigger_id"], view=context["modal"])

    app.action(EDIT)(ack=check_edit, lazy=[open_edit])

    @app.view(EDIT_MODAL)
    def submit_edit(ack: Ack, view: dict[str, Any], body: dict[str, Any]) -> None:
        text = view["state"]["values"][PLAN_BLOCK][PLAN_INPUT].get("value") or ""
        actor = body["user"]["id"]

        def save(session: Session) -> dict[str, Any]:
            approvers = may_decide(session, plan_id, actor, "edit")
            return {"text": plans.edit(session, plan_id, text, actor=actor, approvers=approvers)}

        try:
            plan_id = actions.parse_task_id(view.get("private_metadata", ""))
            once(engine, delivery_key(body), save)
        except USER_ERRORS as exc:  # shown under the text box; the modal stays open
            ack(response_action="errors", errors={PLAN_BLOCK: str(exc)[:150]})
            return
        ack()

    def may_decide(session: Session, plan_id: int, user: str, verb: str) -> list[str]:
        """Checked against the plan as stored; returns its repo's approvers."""
        plan = get_plan(session, plan_id)
        access.check_member(config(), user, f"{verb} plans")
        repo = config().repos.get(plan.repo)
        approvers = list(repo.approvers) if repo else []
        plans.check_may_decide(plan, user, approvers, verb)
        return approvers
