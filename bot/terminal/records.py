"""The CLI's `--json` records: plain dicts with stable field names (docs/CLI.md lists them).

Pure: values in, dicts out. Fields are only ever added, never renamed or removed, so scripts
written against one release keep working. Times are ISO 8601 in UTC; money is exact
(`nanos`, nano-dollars) with `usd` beside it as a number for convenience."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from executor.config.redact import redact
from executor.config.schema import Config
from executor.costs.budget import ALL, Budget, Day
from storage import nudge_files
from storage.digests import DigestData, DigestTask
from storage.lifecycle import State
from storage.models import Nudge, Priority, Task, TaskEvent
from storage.text import clean


def when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def money(nanos: int, unpriced_tokens: int = 0) -> dict[str, Any]:
    """`unpriced_tokens`: tokens of models without a price, so the cost is a lower bound."""
    return {"usd": nanos / 1e9, "nanos": nanos, "unpriced_tokens": unpriced_tokens}


def task(t: Task) -> dict[str, Any]:
    """One task, as `ls --json` lists it and `show --json` starts."""
    return {
        "id": t.id,
        "state": State(t.state).value,
        "repo": t.repo,
        "prompt": clean(t.prompt),
        "branch": t.branch,
        "priority": Priority(t.priority).name.lower(),
        "requester": t.requester,
        "source": t.source,
        "reason": clean(t.reason) if t.reason else None,
        "created_at": when(t.created_at),
        "updated_at": when(t.updated_at),
        "started_at": when(t.started_at),
        "finished_at": when(t.finished_at),
        "attempts": t.attempts,
        "turns": t.turns,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "cost": money(t.cost_nanos, t.unpriced_tokens),
        "base_commit": t.base_commit,
        "head_commit": t.head_commit,
        "merge_commit": t.merge_commit,
        "approved_by": t.approved_by,
        "summary": clean(t.summary) if t.summary else None,
        "error": clean(t.error) if t.error else None,
        "model_wait": (
            {"since": when(t.model_wait_since), "what": clean(t.model_wait or "")}
            if t.model_wait_since is not None
            else None
        ),
    }


def review_entry(t: Task, score: int, reasons: Sequence[str]) -> dict[str, Any]:
    """A task in the review queue: the task, its risk score and the reasons, worst first."""
    return task(t) | {"risk_score": score, "risk_reasons": list(reasons)}


def event(e: TaskEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "task_id": e.task_id,
        "kind": e.kind,
        "at": when(e.created_at),
        "payload": e.payload,
    }


def nudge(n: Nudge, edited_at: datetime | None = None) -> dict[str, Any]:
    """A nudge; `edited_at`: when its text was last replaced (its `nudge_edited` events).
    A withdrawn one (its Slack reply deleted before the agent read it) keeps no words."""
    return {
        "id": n.id,
        "author": n.author,
        "source": n.source,
        "text": clean(n.text),
        "at": when(n.created_at),
        "taken": n.consumed_at is not None,
        "files": [nudge_file(f) for f in n.files or []],
        "files_pending": n.files_pending,
        "edited": edited_at is not None,
        "edited_at": when(edited_at),
        "withdrawn": n.deleted_at is not None,
        "withdrawn_at": when(n.deleted_at),
    }


def nudge_file(ref: dict[str, Any]) -> dict[str, Any]:
    """A reply's file as Slack described it (untrusted): its name, type and size only; its
    content, once fetched, is in the nudge's text."""
    kind = ref.get("mimetype") or ref.get("filetype")
    return {
        "name": clean(nudge_files.name(ref)),
        "type": clean(str(kind)) if kind else None,
        "size": nudge_files.size(ref),
    }


def nudge_edits(events: Sequence[TaskEvent]) -> dict[int, datetime]:
    """When each nudge was last edited, from the task's events (oldest first)."""
    return {
        e.payload["id"]: e.created_at
        for e in events
        if e.kind == "nudge_edited" and isinstance(e.payload.get("id"), int)
    }


def detail(
    t: Task,
    nudges: Sequence[Nudge],
    events: Sequence[TaskEvent],
    *,
    proof: dict | None,
    runs: Sequence[str],
    times: dict[str, float | None],
    edits: dict[int, datetime] | None = None,
) -> dict[str, Any]:
    """`show --json`: the task, its time split, proof pack, nudges (withdrawn ones too,
    flagged; `edits` from `nudge_edits`) and recent events."""
    edits = edits or {}
    return {
        **task(t),
        **times,
        "runs": list(runs),
        "proof": proof,
        "nudges": [nudge(n, edits.get(n.id or 0)) for n in nudges],
        "events": [event(e) for e in events],
    }


def repos(config: Config) -> list[dict[str, Any]]:
    channels_of: dict[str, list[str]] = {}
    for channel, repo in config.channels.items():
        channels_of.setdefault(repo, []).append(channel)
    return [
        {
            "name": name,
            "default": name == config.default_repo,
            "source": str(repo.path or redact(repo.url or "")),
            "base_branch": repo.base_branch,
            "image": repo.image,
            "checks": list(repo.checks),
            "channels": channels_of.get(name, []),
        }
        for name, repo in config.repos.items()
    ]


def budgets(day: Day, items: Sequence[Budget], waiting: dict[str, int]) -> dict[str, Any]:
    return {
        "day": f"{day.start.astimezone(day.tz):%Y-%m-%d}",
        "timezone": day.tz.key,
        "resets_at": when(day.end),
        "budgets": [
            {
                "scope": "all" if b.scope is ALL else b.scope,
                "spent": money(b.spent.cost_nanos, b.spent.unpriced_tokens),
                "limit": None if b.limit_nanos is None else money(b.limit_nanos),
                "left": None if b.left_nanos is None else money(b.left_nanos),
                "reached": b.reached,
                "waiting": sum(waiting.values())
                if b.scope is ALL
                else waiting.get(b.scope or "", 0),
            }
            for b in items
        ],
    }


def digest(data: DigestData) -> dict[str, Any]:
    def item(d: DigestTask) -> dict[str, Any]:
        return {
            "id": d.id,
            "repo": d.repo,
            "state": State(d.state).value,
            "prompt": clean(d.prompt),
            "requester": d.requester,
            "reason": clean(d.reason) if d.reason else None,
            "risk": d.risk if d.proof is not None else None,
            "proof": d.proof,
        }

    t = data.totals
    return {
        "since": when(data.since),
        "until": when(data.until),
        "awaiting_approval": [item(d) for d in data.awaiting],
        "merged": [item(d) for d in data.merged],
        "failed": [item(d) for d in data.failed],
        "open": [item(d) for d in data.open],
        "totals": {
            "tasks": t.tasks,
            "turns": t.turns,
            "tokens": t.tokens,
            "cost": money(t.cost_nanos, t.unpriced_tokens),
        },
    }
