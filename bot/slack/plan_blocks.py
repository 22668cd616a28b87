"""Block Kit for a plan's card (pure): being planned, the proposal as a numbered list with
its dependencies and paths and the Queue all / Discard buttons, or, once queued, each task's
progress with a link to its thread; when all are merged, the plan's total cost and time.
Planner and people text goes through `escape`, as everywhere in Slack."""

from __future__ import annotations

from collections.abc import Sequence

from bot.slack.blocks import Block, context, cost_text, cut, escape, link_button, section
from storage.lifecycle import State
from storage.models import Plan, Task
from storage.spend import Spent

QUEUE_ALL, DISCARD, EDIT = "plan_queue_all", "plan_discard", "plan_edit"
EDIT_MODAL, PLAN_BLOCK, PLAN_INPUT = "plan_edit_modal", "plan", "yaml"
MAX_INPUT = 3000  # Slack's limit for a plain_text_input
NOTHING = Spent()
MAX_SHOWN = 20  # a plan has at most 12 tasks; room to spare within Slack's 50 blocks

_PROGRESS = {
    State.WAITING: ":link: waiting",
    State.QUEUED: ":hourglass: queued",
    State.NEEDS_INPUT: ":raising_hand: needs input",
    State.AWAITING_APPROVAL: ":eyes: awaiting approval",
    State.MERGING: ":arrows_counterclockwise: merging",
    State.MERGED: ":white_check_mark: merged",
    State.FAILED: ":x: failed",
    State.CANCELLED: ":no_entry_sign: cancelled",
    State.REJECTED: ":wastebasket: rejected",
}


def _button(label: str, action_id: str, plan_id: int, style: str | None = None) -> Block:
    element: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": str(plan_id),
    }
    if style:
        element["style"] = style
    return element


def plan_card(
    plan: Plan,
    tasks: Sequence[Task],
    *,
    links: dict[int, str] | None = None,
    page: str | None = None,
    planning: Spent = NOTHING,
) -> tuple[str, list[Block]]:
    """`links`: task id -> the permalink of its thread, where known. `page`: a signed link
    to the plan's web page (its dependency graph), shown as an Open button. `planning`: what
    the planner's runs cost, part of the plan's total."""
    assert plan.id is not None
    title = escape(plan.title or plan.spec[:80])
    head = f":clipboard: *Plan {plan.id}* · `{escape(plan.repo)}` · *{plan.status}*"
    blocks: list[Block] = [section(head)]
    if plan.status in ("requested", "planning"):
        blocks.append(section(f"Planning: {escape(plan.spec[:500])}"))
        return cut(f"Plan {plan.id} is being planned"), blocks
    if plan.status == "failed":
        blocks.append(section(f":warning: {escape(plan.error or 'no plan')}"))
        blocks.append(context("Reply in this thread to plan again with a note."))
        return cut(f"Plan {plan.id}: no usable plan"), blocks
    blocks.append(section(f"*{title}*"))
    if plan.status == "queued" and tasks:
        lines = []
        for task in tasks[:MAX_SHOWN]:
            where = (links or {}).get(task.id or 0)
            name = f"<{where}|#{task.id}>" if where else f"#{task.id}"
            state = _PROGRESS.get(State(task.state), State(task.state).value)
            lines.append(f"{name} {state} · {escape(task.prompt.splitlines()[0][:100])}")
        blocks.append(section("\n".join(lines)))
        if all(t.state is State.MERGED for t in tasks):
            cost = cost_text(
                planning.cost_nanos + sum(t.cost_nanos for t in tasks),
                planning.unpriced_tokens + sum(t.unpriced_tokens for t in tasks),
            )
            began = min(t.created_at for t in tasks)
            ended = max((t.finished_at or t.updated_at) for t in tasks)
            minutes = int((ended - began).total_seconds() // 60)
            blocks.append(
                section(f":tada: All merged · {cost} (planning included) · {minutes} min")
            )
        if page:
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"plan-{plan.id}",
                    "elements": [link_button("Open", page, plan.id)],
                }
            )
        return cut(f"Plan {plan.id}: {plan.title}"), blocks
    lines = []
    for number, item in enumerate(plan.proposal[:MAX_SHOWN], 1):
        after = item.get("after") or []
        needs = f" _(after {', '.join(map(str, after))})_" if after else ""
        paths = ", ".join(f"`{escape(str(p))}`" for p in item.get("allowed_paths") or [])
        prompt = escape(
            str(item.get("prompt", "")).splitlines()[0][:150] if item.get("prompt") else ""
        )
        lines.append(
            f"*{number}.* [{escape(str(item.get('size', 'M')))}] {prompt}{needs}\n    {paths}"
        )
    blocks.append(section("\n".join(lines)))
    if plan.status == "proposed":
        if plan.note:
            blocks.append(section(f":warning: {escape(plan.note)}"))
        blocks.append(context("Reply in this thread to plan again with your feedback."))
        blocks.append(
            {
                "type": "actions",
                "block_id": f"plan-{plan.id}",
                "elements": [
                    _button("Queue all", QUEUE_ALL, plan.id, "primary"),
                    _button("Edit", EDIT, plan.id),
                    _button("Discard", DISCARD, plan.id, "danger"),
                    *([link_button("Open", page, plan.id)] if page else []),
                ],
            }
        )
    return cut(f"Plan {plan.id}: {plan.title}"), blocks


def edit_modal(plan_id: int, text: str) -> Block:
    """The plan as YAML in one text box: change, drop or add tasks, then Save."""
    return {
        "type": "modal",
        "callback_id": EDIT_MODAL,
        "private_metadata": str(plan_id),
        "title": {"type": "plain_text", "text": f"Edit plan {plan_id}"[:24]},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": PLAN_BLOCK,
                "label": {
                    "type": "plain_text",
                    "text": "Tasks (prompt, allowed_paths, after, size)",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": PLAN_INPUT,
                    "multiline": True,
                    "max_length": MAX_INPUT,
                    "initial_value": text,
                },
            }
        ],
    }
