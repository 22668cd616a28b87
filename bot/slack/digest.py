"""The digest as Block Kit, pure: `DigestData` in, fallback text and blocks out.

Within Slack's limits by construction: at most `MAX_AWAITING` tasks awaiting approval get
their own section and buttons (riskiest first; the rest are counted in a line saying where to
find them), and each list (merged, failed, open) is one section cut at whole lines with a
"… and N more" line, so nothing is dropped without saying so. At most 28 blocks."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.slack.blocks import (
    APPROVE,
    DIFFSTAT,
    MAX_SECTION,
    REJECT,
    Block,
    button,
    context,
    cut,
    escape,
    section,
)
from executor.costs.pricing import cost_text
from storage.digests import DigestData, DigestTask, Totals

MAX_AWAITING = 10  # each is 2 blocks (text, buttons); the message allows 50
PROMPT_SHOWN = 100


def render(
    data: DigestData, *, tz: ZoneInfo, title: str = "nightcrew digest"
) -> tuple[str, list[Block]]:
    """The digest message: (notification text, blocks). An empty one is one line."""
    since = f"{_when(data.since, tz)} ({tz.key})"
    if data.empty:
        line = f":zzz: {title}: nothing happened since {since}, and nothing is waiting."
        return line, [section(line)]
    window = f"since {since}, until {_when(data.until, tz)}"
    out: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        context(window),
    ]
    out += _awaiting(data.awaiting)
    out += _listed(":white_check_mark: *Merged*", data.merged, _merged_line)
    out += _listed(":x: *Failed*", data.failed, _failed_line)
    out += _listed(":gear: *Running, queued or waiting for input*", data.open, _open_line)
    out.append(context(totals_line(data.totals)))
    return summary_text(data, title), out


def summary_text(data: DigestData, title: str = "nightcrew digest") -> str:
    parts = [
        f"{len(data.awaiting)} awaiting approval",
        f"{len(data.merged)} merged",
        f"{len(data.failed)} failed",
        f"{len(data.open)} still open",
    ]
    return f"{title}: " + ", ".join(parts)


def proof_summary(proof: dict[str, Any] | None) -> str:
    """One line: risk, checks, review, diff size."""
    if not proof:
        return "no proof pack recorded"
    parts = []
    risk = proof.get("risk") or {}
    if risk:
        reasons = "; ".join(str(r) for r in risk.get("reasons") or [])
        level = f"risk *{escape(str(risk.get('level', '?')))}*"
        parts.append(level + (f" ({escape(reasons)})" if reasons else ""))
    checks = proof.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    parts.append(f"checks {passed}/{len(checks)} passed" if checks else "no checks")
    review = proof.get("review") or {}
    verdict = escape(str(review.get("verdict", "?")).replace("_", " "))
    parts.append(f"review: {verdict}" if review else "not reviewed")
    files = len(proof.get("files") or [])
    parts.append(f"+{proof.get('insertions', 0)} -{proof.get('deletions', 0)} in {files} files")
    return " · ".join(parts)


def totals_line(totals: Totals) -> str:
    return (
        f"*Totals:* {totals.tasks:,} tasks · {totals.turns:,} turns · "
        f"{totals.tokens:,} tokens · {cost_text(totals.cost_nanos, totals.unpriced_tokens)}"
    )


def _awaiting(tasks: list[DigestTask]) -> list[Block]:
    if not tasks:
        return [section(":eyes: *Awaiting approval:* none")]
    out = [section(f":eyes: *Awaiting approval ({len(tasks)})*, riskiest first")]
    for task in tasks[:MAX_AWAITING]:
        line = f"*{task.id}* `{task.repo}` {_prompt(task)} · {_who(task.requester)}"
        out.append(section(f"{line}\n{proof_summary(task.proof)}"))
        out.append(
            {
                "type": "actions",
                "block_id": f"digest-{task.id}",
                "elements": [
                    button("Approve & merge", APPROVE, task.id, "primary"),
                    button("Reject", REJECT, task.id, "danger"),
                    button("Show diff stat", DIFFSTAT, task.id),
                ],
            }
        )
    if len(tasks) > MAX_AWAITING:
        rest = len(tasks) - MAX_AWAITING
        out.append(context(f"… and {rest:,} more awaiting approval, less risky: `/agent list all`"))
    return out


def _listed(heading: str, tasks: list[DigestTask], line: Any) -> list[Block]:
    """One section: the heading and as many whole lines as fit, then how many did not."""
    if not tasks:
        return [section(f"{heading}: none")]
    text = f"{heading} ({len(tasks):,})"
    # A plan's tasks together, under their plan; the rest first, in their order (stable sort).
    tasks = sorted(tasks, key=lambda t: t.plan_id or 0)
    for shown, task in enumerate(tasks):
        more = f"\n… and {len(tasks) - shown:,} more: `/agent list all`"
        candidate = f"{text}\n• {line(task)}"
        if len(candidate) + len(more) > MAX_SECTION:
            text += more
            break
        text = candidate
    return [section(text)]


def _merged_line(task: DigestTask) -> str:
    return f"*{task.id}* `{task.repo}` {_prompt(task)}"


def _failed_line(task: DigestTask) -> str:
    reason = cut(escape(task.reason or "no reason recorded"), 200)
    return f"*{task.id}* `{task.repo}` {_prompt(task)} — {reason}"


def _open_line(task: DigestTask) -> str:
    return f"*{task.id}* `{task.repo}` _{task.state.value.replace('_', ' ')}_ {_prompt(task)}"


def _prompt(task: DigestTask) -> str:
    plan = f"_plan {task.plan_id}_ · " if task.plan_id is not None else ""
    return plan + _prompt_text(task)


def _prompt_text(task: DigestTask) -> str:
    text = " ".join(task.prompt.split())
    if len(text) > PROMPT_SHOWN:
        text = text[: PROMPT_SHOWN - 1] + "…"
    return escape(text)


def _who(user: str) -> str:
    return user if user.startswith("local:") else f"<@{user}>"


def _when(at: datetime, tz: ZoneInfo) -> str:
    return at.astimezone(tz).strftime("%a %d %b %H:%M")
