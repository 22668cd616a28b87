"""Block Kit rendering, pure: task cards, milestone lines, lists, help, the App Home and the
modals. Everything stays inside Slack's limits (50 blocks per message, 3,000 characters per
section text), cutting long text with a note instead of being refused by Slack."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from executor.costs.budget import ALL, WAITING, Budget, Day
from executor.costs.pricing import cost_text, usd
from storage.dependencies import RUN_ANYWAY_HINT
from storage.lifecycle import CLOSED, WORKING, State
from storage.models import Task, utcnow

Block = dict[str, Any]
MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FALLBACK = 3000  # the notification text; Slack truncates far beyond, keep it readable

# Stable action ids: listeners and old cards in Slack depend on them; the value is the task id.
NUDGE, CANCEL, APPROVE, REJECT = "task_nudge", "task_cancel", "task_approve", "task_reject"
CHANGES, DIFFSTAT, RETRY = "task_changes", "task_diffstat", "task_retry"
OPEN = "task_open"  # a link button to the task's page; Slack still sends a click to ack
RUN_ANYWAY = "task_run_anyway"  # a prerequisite failed: run on the current base
# The modals: callback ids and the one text box they hold.
CHANGES_MODAL, NUDGE_MODAL = "changes_modal", "nudge_modal"
NOTE_BLOCK, NOTE_INPUT = "note", "text"

_EMOJI = {
    State.WAITING: ":link:",
    State.QUEUED: ":hourglass:",
    State.NEEDS_INPUT: ":raising_hand:",
    State.AWAITING_APPROVAL: ":eyes:",
    State.MERGED: ":white_check_mark:",
    State.FAILED: ":x:",
    State.CANCELLED: ":no_entry_sign:",
    State.REJECTED: ":wastebasket:",
}
# Which state changes deserve a line in the thread; the rest only refresh the card.
_MILESTONES = {
    State.RUNNING: "started working",
    State.NEEDS_INPUT: "needs your input",
    State.AWAITING_APPROVAL: "is ready for review",
    State.MERGED: "was merged",
    State.FAILED: "failed",
    State.CANCELLED: "was cancelled",
    State.REJECTED: "was rejected",
    State.QUEUED: "is queued again",
    State.WAITING: "waits for its prerequisites",
}


def cut(text: str, limit: int = MAX_SECTION) -> str:
    """`text` within `limit` characters, with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    note = "\n… ({:,} more characters; see `nightcrew show`)"
    keep = limit - len(note.format(len(text)))
    return text[:keep] + note.format(len(text) - keep)


def escape(text: str) -> str:
    """Slack's mrkdwn escaping for text people or agents wrote: an agent's summary must not
    ping `<!channel>`, `<@U…>`, `<#C…>` or `<!subteam^…>`, or forge a link (`<url|text>`).
    Every piece of such text in a message, a modal or the App Home goes through here; a bare
    URL stays plain text that Slack may show as a link to itself, never a disguised one."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text)}}


def context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text)}]}


def button(label: str, action_id: str, task_id: int, style: str | None = None) -> Block:
    element: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": str(task_id),
    }
    if style:
        element["style"] = style
    return element


def link_button(label: str, url: str, task_id: int) -> Block:
    """A button that opens `url` (a signed page link) in the browser."""
    return {**button(label, OPEN, task_id), "url": url}


def buttons_for(task: Task, open_url: str | None = None) -> list[Block]:
    assert task.id is not None
    tid, state = task.id, State(task.state)
    opener = [link_button("Open", open_url, tid)] if open_url else []
    if state is State.AWAITING_APPROVAL:
        return [
            button("Approve & merge", APPROVE, tid, "primary"),
            button("Reject", REJECT, tid, "danger"),
            button("Request changes", CHANGES, tid),
            button("Show diff stat", DIFFSTAT, tid),
            *opener,
        ]
    if state is State.NEEDS_INPUT and task.reason and RUN_ANYWAY_HINT in task.reason:
        return [
            button("Run anyway", RUN_ANYWAY, tid),
            button("Cancel", CANCEL, tid, "danger"),
            *opener,
        ]
    if state in (State.FAILED, State.NEEDS_INPUT):
        return [button("Retry", RETRY, tid), button("Nudge", NUDGE, tid), *opener]
    if state is State.WAITING:
        return [button("Cancel", CANCEL, tid, "danger"), *opener]
    if (state in WORKING and state is not State.MERGING) or state is State.QUEUED:
        return [button("Nudge", NUDGE, tid), button("Cancel", CANCEL, tid, "danger"), *opener]
    return opener


def elapsed(task: Task, now: datetime | None = None) -> str:
    start = task.started_at or task.created_at
    end = task.finished_at or now or utcnow()
    seconds = max(0, int((end - start).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def card(
    task: Task, *, now: datetime | None = None, open_url: str | None = None
) -> tuple[str, list[Block]]:
    """The task's card (the root of its thread): fallback text and blocks; `open_url`, a
    signed link to the task's page, adds an Open button."""
    state = State(task.state)
    emoji = _EMOJI.get(state, ":gear:")
    title = f"{emoji} *Task {task.id}* · `{task.repo}` · *{state.value.replace('_', ' ')}*"
    facts = [
        f"branch `{task.branch}`",
        f"{task.turns} turns",
        f"{task.tokens_in + task.tokens_out:,} tokens",
        cost_text(task.cost_nanos, task.unpriced_tokens),
        f"{elapsed(task, now)} elapsed",
        f"last activity {task.updated_at:%H:%M} UTC",
        f"by <@{task.requester}>" if not task.requester.startswith("local:") else task.requester,
    ]
    blocks = [section(title), section(_quote(escape(task.prompt))), context(" · ".join(facts))]
    if task.reason and state is State.QUEUED and task.reason.startswith(WAITING):
        waiting = task.reason.removeprefix(WAITING)
        blocks.append(section(f"*Waiting for budget:* {escape(waiting)}"))
    elif task.reason and state is not State.QUEUED:
        blocks.append(section(f"*Why:* {escape(task.reason)}"))
    if waits_for_model(task):
        assert task.model_wait_since is not None
        since = f"{task.model_wait_since:%H:%M} UTC"
        blocks.append(
            section(
                f":hourglass_flowing_sand: *Waiting for the model* since {since}:"
                f" {escape(task.model_wait or 'the endpoint is failing')}"
            )
        )
    if task.pr_url and task.pr_number is not None:
        blocks.append(section(_pr_line(task)))
    if task.egress_refused:
        blocks.append(
            section(
                f":warning: *{task.egress_refused} connection(s) refused* outside the repo's "
                "network allowlist: hosts and ports are in the task log"
            )
        )
    if task.merge_commit:
        blocks.append(section(f"*Merged* as `{task.merge_commit[:12]}`"))
    elif state is State.AWAITING_APPROVAL and task.approved_commit not in (None, task.head_commit):
        approved = str(task.approved_commit)[:12]
        blocks.append(
            section(
                f":warning: *Changed since the approved `{approved}`*: the interdiff is in "
                "the thread's proof pack; approving again approves it"
            )
        )
    elif task.summary and state in (State.AWAITING_APPROVAL, State.MERGING):
        blocks.append(section(f"*Summary:* {escape(task.summary)}"))
    actions = buttons_for(task, open_url)
    if actions:
        blocks.append({"type": "actions", "block_id": f"task-{task.id}", "elements": actions})
    text = f"Task {task.id} ({state.value}): {escape(task.prompt)}"
    return cut(text, MAX_FALLBACK), blocks[:MAX_BLOCKS]


def waits_for_model(task: Task) -> bool:
    """A task at work whose model call waits out an outage of the model endpoint."""
    return task.model_wait_since is not None and State(task.state) in WORKING


def _pr_line(task: Task) -> str:
    """The task's pull request as a link (only an http(s) URL without Slack's link syntax in
    it becomes one; anything else is shown as text)."""
    url, label = str(task.pr_url), f"Pull request #{task.pr_number}"
    state = f" ({task.pr_state})" if task.pr_state else ""
    if re.fullmatch(r"https?://[^\s<>|]+", url):
        return f"*<{url}|{label}>*{state}"
    return f"*{label}*{state}: {escape(url)}"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


def milestone(task: Task, payload: dict[str, Any]) -> str | None:
    """The thread line for a state change, or None when the card update says it all."""
    try:
        to = State(payload.get("to", ""))
    except ValueError:
        return None
    what = _MILESTONES.get(to)
    if what is None or (to is State.QUEUED and payload.get("from") == "queued"):
        return None
    line = f"{_EMOJI.get(to, ':gear:')} Task {task.id} {what}"
    reason = payload.get("reason")
    if reason and to is not State.RUNNING:
        line += f": {escape(str(reason))}"
    if to is State.MERGED and task.merge_commit:
        line += f" (commit `{task.merge_commit[:12]}`)"
    return cut(line)


def card_moved(subject: str, why: str, *, fresh_root: bool, continues: str) -> str:
    """The thread's note when a card (of `subject`: "Task 3", "Plan 2") was posted afresh
    because Slack refused to edit the old one (`why`: its error). With `fresh_root` the old
    thread was gone and the fresh card is this thread's root (`continues`: what happens here
    now); otherwise the fresh card is just above."""
    said = f" (Slack said `{escape(why)}`)" if why else ""
    if fresh_root:
        return (
            f":arrows_counterclockwise: {subject}'s earlier card could no longer be "
            f"edited{said}: this is a fresh one; {continues}."
        )
    return (
        f":arrows_counterclockwise: {subject}'s card could no longer be edited{said}: "
        "the fresh one above is kept up to date from now on."
    )


SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,20}")


def files_missed(task: Task, author: str, files: Sequence[str]) -> str:
    """The thread's note when the agent took a reply without its files: nightcrew could not
    fetch them in time (the bot was down). `files` are names people chose: escaped, cut."""
    who = f"<@{author}> " if SLACK_USER.fullmatch(author) else ""
    names = ", ".join(f"`{escape(str(name)[:80])}`" for name in list(files)[:10]) or "its files"
    return (
        f":warning: {who}Task {task.id}'s agent got your reply without {names}: nightcrew "
        "could not fetch them from Slack in time. Send them again in a new reply if it needs them."
    )


def task_list(tasks: Sequence[Task], heading: str) -> list[Block]:
    if not tasks:
        return [section(f"{heading}: none")]
    blocks = [section(f"*{heading}*")]
    for task in tasks[: MAX_BLOCKS - 2]:
        waits = " :hourglass_flowing_sand: waiting for the model" if waits_for_model(task) else ""
        line = (
            f"*{task.id}* `{State(task.state).value}`{waits} `{task.repo}`"
            f" {escape(task.prompt[:120])}"
        )
        blocks.append(section(line))
    if len(tasks) > MAX_BLOCKS - 2:
        blocks.append(context(f"… and {len(tasks) - (MAX_BLOCKS - 2)} more"))
    return blocks


def home(
    groups: Iterable[tuple[str, Sequence[Task]]],
    *,
    links: dict[int, str] | None = None,
    reasons: dict[int, str] | None = None,
    review_url: str | None = None,
) -> Block:
    """The App Home view: the person's tasks, grouped, each with its buttons. `links`: each
    task's page; `reasons`: why a waiting task ranks where it does (bot/review.py);
    `review_url`: the review queue's page."""
    links, reasons = links or {}, reasons or {}
    blocks: list[Block] = [{"type": "header", "text": {"type": "plain_text", "text": "Tasks"}}]
    if review_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [{**button("Open the review queue", OPEN, 0), "url": review_url}],
            }
        )
    for heading, tasks in groups:
        blocks.append(section(f"*{heading}*" if tasks else f"*{heading}*: none"))
        for task in tasks:
            line = (
                f"*{task.id}* `{State(task.state).value}` `{task.repo}` {escape(task.prompt[:150])}"
            )
            if task.id in reasons:
                line += f"\n_{escape(reasons[task.id])}_"
            blocks.append(section(line))
            url = links.get(task.id or 0)
            actions = buttons_for(task, url) if State(task.state) not in CLOSED else []
            if actions:
                blocks.append({"type": "actions", "elements": actions})
    if len(blocks) > MAX_BLOCKS:  # Home allows 100 blocks, we keep one limit everywhere
        blocks = [*blocks[: MAX_BLOCKS - 1], context("… more in `/agent list all`")]
    return {"type": "home", "blocks": blocks}


def review_list(
    entries: Sequence[Any], links: dict[int, str], review_url: str | None
) -> list[Block]:
    """`/agent review`: the tasks this person may approve, riskiest first (bot/review.py),
    each with its reasons and Approve, Open and Request changes."""
    if not entries:
        return [section("Nothing waits for your approval.")]
    head = f"*Waiting for your approval*, riskiest first ({len(entries)})"
    if review_url:
        head += f" · <{review_url}|open the queue>"
    blocks = [section(head)]
    for entry in entries[: (MAX_BLOCKS - 2) // 2]:
        task = entry.task
        level = escape(str(entry.level))
        line = f"*{task.id}* risk *{level}* `{escape(task.repo)}` {escape(task.prompt[:150])}"
        blocks.append(section(f"{line}\n_{escape(entry.why)}_"))
        elements = [button("Approve & merge", APPROVE, task.id, "primary")]
        if task.id in links:
            elements.append(link_button("Open", links[task.id], task.id))
        elements.append(button("Request changes", CHANGES, task.id))
        blocks.append({"type": "actions", "elements": elements})
    if len(entries) > (MAX_BLOCKS - 2) // 2:
        blocks.append(context(f"… and {len(entries) - (MAX_BLOCKS - 2) // 2} more"))
    return blocks


def note_modal(callback_id: str, task_id: int, *, title: str, label: str) -> Block:
    """A modal with one text box; its submission becomes a nudge to task `task_id`."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": str(task_id),
        "title": {"type": "plain_text", "text": title[:24]},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": NOTE_BLOCK,
                "label": {"type": "plain_text", "text": label[:2000]},
                "element": {
                    "type": "plain_text_input",
                    "action_id": NOTE_INPUT,
                    "multiline": True,
                },
            }
        ],
    }


HELP = (
    "*nightcrew* runs coding agents for you.\n"
    "• `/agent add [--repo R] [--priority high|normal|low] <what to do>` or just "
    "`/agent <what to do>`: queue a task; its card appears in this channel\n"
    "• reply in a task's thread to steer its agent (its requester or the repo's approvers)\n"
    "• `/agent list [mine|channel|all]`, `/agent show ID`, `/agent cancel ID`, "
    "`/agent retry ID`, `/agent repos`, `/agent budget` (today's spend against the budgets)\n"
    "• `/agent add --after 12,14 <what to do>`: start only once tasks 12 and 14 are merged\n"
    "• `/agent plan [--repo R] <spec>`: cut a spec into small dependent tasks; the plan's "
    "card has Queue all and Discard, and a reply in its thread plans again with your note\n"
    "• approve, reject or request changes with the buttons on the card\n"
    "• `/agent digest`: what finished, failed and waits since the last daily digest "
    "(`mine`: only your tasks); `/agent digest subscribe|unsubscribe`: get yours by DM\n"
    '• `/agent schedule "0 9 * * 1" [--repo R] [--tz Europe/Berlin] <what to do>`: queue '
    "that task at every cron time (here: Mondays 9:00); `/agent schedule list`, "
    "`/agent schedule pause|resume|delete ID`"
)


def proof(payload: dict[str, Any]) -> list[Block]:
    """The proof pack under the "ready for review" milestone: checks, review, risk, diff."""
    lines = []
    for check in payload.get("checks") or []:
        mark = ":white_check_mark:" if check.get("passed") else ":x:"
        lines.append(f"{mark} `{escape(str(check.get('command', '?')))}`")
    review = payload.get("review") or {}
    if review:
        verdict = escape(str(review.get("verdict", "?")).replace("_", " "))
        lines.append(f"*Review:* {verdict}. {escape(str(review.get('summary', '')))}".rstrip())
    risk = payload.get("risk") or {}
    if risk:  # the reasons quote file names, which the agent chose
        reasons = escape("; ".join(str(r) for r in risk.get("reasons") or []))
        lines.append(f"*Risk:* {escape(str(risk.get('level', '?')))} ({reasons})")
    changed = f"+{payload.get('insertions', 0)} -{payload.get('deletions', 0)}"
    lines.append(f"*Diff:* {len(payload.get('files') or [])} files, {changed}")
    if payload.get("commit") and payload.get("checks"):
        lines.append(f"*Proven on:* `{escape(str(payload['commit'])[:12])}` (clean checkout)")
    out = [section("\n".join(lines))]
    if payload.get("diff_stat"):
        out.append(section(f"```{escape(str(payload['diff_stat']))}```"))
    since = payload.get("since_approval")
    if since:  # what a second approval approves: the interdiff, not just "it changed"
        approved = escape(str(since.get("approved", ""))[:12])
        out.append(section(f":warning: *Changed since the approved `{approved}`:*"))
        diff = str(since.get("diff") or since.get("diff_stat") or "")
        out.append(section(f"```{cut(escape(diff), MAX_SECTION - 6)}```"))
    return out


def budget_text(
    day: Day,
    budgets: Sequence[Budget],
    waiting: dict[str, int],
    *,
    configured: bool = True,
    now: datetime | None = None,
) -> str:
    """`/agent budget`: today's spend against each budget, one line each."""
    lines = [f"*Spend today*, {day.label}; resets in {day.resets_in(now or utcnow())}"]
    for budget in budgets:
        line = f"• {escape(budget.name)}: {usd(budget.spent.cost_nanos)}"
        if budget.limit_nanos is not None:
            line += f" of {usd(budget.limit_nanos)}"
            left = budget.left_nanos or 0
            line += " — *reached*" if budget.reached else f" ({usd(left)} left)"
        if budget.spent.unpriced_tokens:
            line += f" + {budget.spent.unpriced_tokens:,} tokens at unknown cost"
        held = sum(waiting.values()) if budget.scope is ALL else waiting.get(budget.scope or "", 0)
        if held:
            line += f"; {held} task{'s' if held != 1 else ''} waiting"
        lines.append(line)
    if not configured:
        lines.append("No budgets set: add `budgets: {daily_usd: 20}` to nightcrew.yaml.")
    return cut("\n".join(lines))
