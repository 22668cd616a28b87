"""Rich renderings of tasks for the terminal. Pure: values in, renderables out.

Text that people, agents or models wrote is shown as written: always as a `Text` (rich never
reads it as markup, so `[/x]` is just that), through `plain`, which drops control characters
an older release may have stored (an escape sequence would clear the screen or fake lines)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from rich.console import Group
from rich.table import Table
from rich.text import Text

from bot.review import Entry
from executor.config.redact import redact
from executor.config.schema import Config
from executor.costs.budget import ALL, WAITING, Budget, Day
from executor.costs.pricing import cost_text, usd
from storage import nudge_files
from storage.digests import DigestData
from storage.lifecycle import WORKING, State
from storage.models import Nudge, Priority, Task, TaskEvent, utcnow
from storage.text import clean

STATE_STYLE = {
    State.WAITING: "cyan",
    State.QUEUED: "cyan",
    State.NEEDS_INPUT: "bold yellow",
    State.AWAITING_APPROVAL: "bold magenta",
    State.MERGED: "green",
    State.FAILED: "bold red",
    State.CANCELLED: "dim",
    State.REJECTED: "dim",
}


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    seconds = int(((now or utcnow()) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def plain(text: object) -> Text:
    """Untrusted text for the terminal: never markup, never a control character."""
    return Text(clean(str(text)))


def state_text(state: State) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, "blue"))


def one_line(text: str, width: int | None = 60) -> str:
    """`text` on one line, cut to `width` with `…` (None: never cut, for scripts)."""
    flat = " ".join(text.split())
    return flat if width is None or len(flat) <= width else flat[: width - 1] + "…"


def task_table(
    tasks: Sequence[Task], now: datetime | None = None, prompt_width: int | None = 60
) -> Table:
    """`prompt_width`: None is for scripts (a pipe: `ls | grep word`): each prompt in full,
    and the creation time as an ISO 8601 UTC time rather than an age that changes."""
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "REPO", "PROMPT", "BY", "CREATED", "COST"):
        table.add_column(column, justify="right" if column in ("ID", "COST") else "left")
    for task in tasks:
        state = state_text(State(task.state))
        if waits_for_budget(task):
            state.append(" (budget)", style="yellow")
        if waits_for_model(task):
            state.append(" (waiting for the model)", style="yellow")
        if task.plan_id is not None:
            state.append(f" (plan {task.plan_id})", style="dim")
        table.add_row(
            str(task.id),
            state,
            plain(task.repo),
            plain(one_line(task.prompt, prompt_width)),
            plain(task.requester),
            ago(task.created_at, now)
            if prompt_width
            else task.created_at.isoformat(timespec="seconds"),
            cost_cell(task),
        )
    return table


def waits_for_budget(task: Task) -> bool:
    return task.state is State.QUEUED and (task.reason or "").startswith(WAITING)


def waits_for_model(task: Task) -> bool:
    return task.model_wait_since is not None and State(task.state) in WORKING


def _model_wait(task: Task, now: datetime | None) -> str:
    if not waits_for_model(task):
        return ""
    since = task.model_wait_since
    assert since is not None
    what = task.model_wait or "the endpoint fails"
    return f"since {since:%H:%M} UTC ({ago(since, now)}): {what}"


def cost_cell(task: Task) -> str:
    """Short: `$0.42`, `$0.42+?` with some tokens unpriced, `?` with nothing priced."""
    if not task.unpriced_tokens:
        return usd(task.cost_nanos)
    return f"{usd(task.cost_nanos)}+?" if task.cost_nanos else "?"


def claims(events: Sequence[TaskEvent]) -> list[str]:
    """Each claim of the task from its event log, oldest first: which executor worker ran
    which attempt, and what took it back when a worker died."""
    lines: list[str] = []
    for e in events:
        p = e.payload
        if e.kind == "state" and p.get("to") == "preparing":
            lines.append(f"{p.get('by')} (attempt {p.get('attempt')})")
        elif e.kind == "merge_claimed":
            lines.append(f"{p.get('by')} (merge, attempt {p.get('attempt')})")
        elif p.get("by") == "reaper" and e.kind in ("state", "released") and lines:
            lines[-1] += f"; taken back: {p.get('reason')}"
    return lines


def task_detail(
    task: Task,
    nudges: Sequence[Nudge],
    events: Sequence[TaskEvent],
    now: datetime | None = None,
    proof: dict | None = None,
    runs: Sequence[str] = (),
    times: dict[str, float | None] | None = None,
    edited: Collection[int] = (),
) -> Group:
    """`runs`: who claimed the task, attempt by attempt (see `claims`); `times`: the
    working time and the wait for approval (see `time_split`); `edited`: the nudges whose
    text a person replaced in Slack."""
    times = times or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("task", f"{task.id}"),
        ("state", state_text(State(task.state))),
        ("why", task.reason or ""),
        ("waiting for the model", _model_wait(task, now)),
        ("repo", task.repo),
        ("branch", task.branch or ""),
        ("priority", Priority(task.priority).name.lower()),
        ("requested by", f"{task.requester} via {task.source}"),
        ("created", ago(task.created_at, now)),
        ("started", ago(task.started_at, now)),
        ("finished", ago(task.finished_at, now)),
        ("attempts", str(task.attempts)),
        ("worker", task.worker_id or ""),
        ("ran on", "\n".join(runs) or task.executor or ""),
        ("cancel requested", task.cancel_requested_by or ""),
        ("approved by", task.approved_by or ""),
        ("approved commit", (task.approved_commit or "")[:12]),
        ("turns", str(task.turns)),
        ("tokens", f"{task.tokens_in:,} in / {task.tokens_out:,} out"),
        ("cost", cost_text(task.cost_nanos, task.unpriced_tokens, places=4)),
        ("working time", _duration(times.get("working_s"))),
        ("awaiting approval", _duration(times.get("awaiting_approval_s"))),
        ("base / head", " / ".join(c[:12] for c in (task.base_commit, task.head_commit) if c)),
        ("merge commit", task.merge_commit or ""),
        ("pull request", f"{task.pr_url} ({task.pr_state})" if task.pr_url else ""),
        ("issue", task.issue_url or ""),
        ("error", task.error or ""),
        ("summary", task.summary or ""),
    ]
    for label, value in rows:
        if value and value != "-":
            grid.add_row(label, value if isinstance(value, Text) else plain(value))
    parts: list[Table | Text] = [grid, Text("\nprompt", style="bold"), plain(task.prompt)]
    if proof:
        parts += proof_lines(proof)
        parts.append(Text(f"  full diff: nightcrew diff {task.id}", style="dim"))
    if nudges:
        parts.append(Text("\nnudges", style="bold"))
        for n in nudges:
            status = (
                "taken"
                if n.consumed_at
                else "waiting for its files"
                if n.files_pending
                else "pending"
            )
            mark = " (edited)" if n.id in edited else ""
            parts.append(plain(f"  [{status}] {n.author}{mark}: {n.text}"))
            names = [clean(nudge_files.name(f)) for f in n.files or []]
            if names:
                parts.append(plain(f"    files: {', '.join(names)}"))
    if events:
        parts.append(Text("\nrecent events (nightcrew log for all)", style="bold"))
        parts.extend(event_line(e) for e in events)
    return Group(*parts)


def proof_lines(proof: dict) -> list[Text]:
    """The proof pack: what a reviewer on the go needs to decide."""
    risk = proof.get("risk") or {}
    lines = [Text("\nproof", style="bold")]
    reasons = "; ".join(str(r) for r in risk.get("reasons", []))
    lines.append(plain(f"  risk: {risk.get('level', '?')}" + (f" ({reasons})" if reasons else "")))
    files, ins, dels = (
        len(proof.get("files", [])),
        proof.get("insertions", 0),
        proof.get("deletions", 0),
    )
    lines.append(Text(f"  diff: {files} file(s), +{ins} -{dels}"))
    lines += [plain(f"    {line}") for line in str(proof.get("diff_stat") or "").splitlines()]
    checks = proof.get("checks") or []
    if not checks:
        lines.append(Text("  checks: none configured"))
    elif proof.get("commit"):
        clean = "a fresh checkout in a fresh container"
        lines.append(Text(f"  checks: proven on {proof['commit'][:12]} ({clean})"))
    for check in checks:
        mark, style = ("✓", "green") if check.get("passed") else ("✗", "red")
        detail = f"{check.get('duration_s', 0):.1f} s"
        if not check.get("passed"):
            detail += f", exit {check.get('exit_code')}"
        lines.append(
            Text.assemble("  ", (mark, style), plain(f" {check.get('command')} ({detail})"))
        )
    review = proof.get("review")
    if review is None:
        lines.append(Text("  review: not reviewed"))
    else:
        verdict = str(review.get("verdict", "?")).replace("_", " ")
        summary = f": {review['summary']}" if review.get("summary") else ""
        lines.append(plain(f"  review: {verdict}{summary}"))
        for n, f in enumerate(review.get("findings", []), 1):
            where = f"{f.get('file')}:{f.get('line')}" if f.get("line") else f.get("file") or ""
            lines.append(plain(f"    {n}. {where} {f.get('message')}".rstrip()))
    if proof.get("rounds"):
        lines.append(Text(f"  revision rounds: {proof['rounds']}"))
    return lines + since_approval_lines(proof.get("since_approval"))


def since_approval_lines(since: dict | None) -> list[Text]:
    """What changed after a person approved (a nudge, a retry, a conflict the agent
    resolved in the merge): the interdiff they approve the second time."""
    if not since:
        return []
    approved, now = str(since.get("approved", ""))[:12], str(since.get("commit", ""))[:12]
    lines = [
        Text(f"\nchanged since the approved {approved} (now {now})", style="bold yellow"),
    ]
    lines += [Text(f"    {line}") for line in (since.get("diff_stat") or "").splitlines()]
    lines += [Text(f"  {line}") for line in (since.get("diff") or "").splitlines()]
    return lines


def time_split(events: Sequence[TaskEvent], now: datetime | None = None) -> dict[str, float | None]:
    """Seconds the task spent working (preparing to merging) and waiting for a person's
    approval, from its state changes: the wait is not the agent's time. A task still in a
    state counts it up to `now`."""
    totals = {"working_s": 0.0, "awaiting_approval_s": 0.0, "needs_input_s": 0.0}
    state: State | None = None
    since: datetime | None = None

    def count(until: datetime) -> None:
        if state is None or since is None:
            return
        key = (
            "working_s"
            if state in WORKING
            else {
                State.AWAITING_APPROVAL: "awaiting_approval_s",
                State.NEEDS_INPUT: "needs_input_s",
            }.get(state)
        )
        if key:
            totals[key] += max(0.0, (until - since).total_seconds())

    for e in events:
        if e.kind == "state" and e.payload.get("to"):
            count(e.created_at)
            state, since = State(e.payload["to"]), e.created_at
    count(now or utcnow())
    return {k: round(v, 1) for k, v in totals.items()}


def _duration(seconds: float | None) -> str:
    if not seconds:
        return ""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    return (
        f"{whole // 3600}h {whole % 3600 // 60}m"
        if whole >= 3600
        else f"{whole // 60}m {whole % 60}s"
    )


def event_line(event: TaskEvent, full: bool = False) -> Text:
    """`full`: long texts are never cut (a pipe); else cut to a screen's line with `…`."""
    p = event.payload
    cut = None if full else 200
    when = event.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if event.kind == "state":
        body = f"{p.get('from')} → {p.get('to')}"
        if p.get("by"):
            body += f" (by {p['by']})"
        if p.get("reason"):
            body += f": {p['reason']}"
    elif event.kind == "created":
        body = f"created by {p.get('by')} on {p.get('repo')}"
    elif event.kind == "nudge":
        body = f"nudge from {p.get('by')}: {one_line(str(p.get('text', '')), cut)}"
    elif event.kind == "cancel_requested":
        body = f"cancel requested by {p.get('by')}"
    elif event.kind == "model_waiting":
        body = f"waiting for the model: {p.get('failure')}; until {p.get('until')}"
    elif event.kind == "model_back":
        body = f"the model answers again after {p.get('waited_s')} s"
    elif event.kind in ("waiting", "waiting_over"):
        body = str(p.get("reason") or "no longer waiting for budget")
    elif event.kind == "turn":
        body = _turn_text(p, full)
    elif event.kind == "setup":
        body = f"setup `{p.get('command')}`: {one_line(str(p.get('output', '')), cut)}"
    elif event.kind in ("agent_output", "agent_command"):
        body = str(p.get("text") or p.get("command") or "").rstrip()
    elif event.kind in _PIPELINE:
        body = one_line(_PIPELINE[event.kind](p), cut)
    else:
        body = one_line(json.dumps(p, ensure_ascii=False, default=str), None if full else 300)
    return Text.assemble((when, "dim"), " ", (clean(f"{event.kind:<16}"), "bold"), " ", plain(body))


def _short(commit: object) -> str:
    return str(commit or "?")[:12]


def _checks_text(p: dict) -> str:
    """`on 1a2b3c4d5e6f: ✓ pytest -q (3.1 s), ✗ ruff check . (exit 1)`; outputs: the page."""
    said = []
    for c in p.get("results") or p.get("checks") or []:
        ok = c.get("exit_code") == 0 and not c.get("killed_reason")
        how = (
            f"{c.get('duration_s', 0):.1f} s"
            if ok
            else c.get("killed_reason") or (f"exit {c.get('exit_code')}")
        )
        said.append(f"{'✓' if ok else '✗'} {c.get('command')} ({how})")
    return f"on {_short(p.get('commit'))}: " + (", ".join(said) or "no checks configured")


def _review_text(p: dict) -> str:
    findings = p.get("findings") or []
    head = str(p.get("verdict", "?")).replace("_", " ")
    head += f", {len(findings)} finding{'s' * (len(findings) != 1)}" if findings else ""
    return f"{head}: {p['summary']}" if p.get("summary") else head


def _diff_text(p: dict) -> str:
    patch = str(p.get("diff") or "")
    files = patch.count("\ndiff --git ") + patch.startswith("diff --git ")
    cut = f", {p['cut']:,} characters cut" if p.get("cut") else ""
    size = f"{files} file(s), {len(patch):,} characters{cut}"
    return f"on {_short(p.get('commit'))}: {size} (`nightcrew diff` shows it)"


def _proof_text(p: dict) -> str:
    risk = p.get("risk") or {}
    checks = p.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    review = (p.get("review") or {}).get("verdict", "none")
    text = (
        f"on {_short(p.get('commit'))}: +{p.get('insertions', 0)} -{p.get('deletions', 0)} in "
        f"{len(p.get('files') or [])} file(s); checks {passed}/{len(checks)} passed; "
        f"review {str(review).replace('_', ' ')}; risk {risk.get('level', '?')}"
    )
    if p.get("since_approval"):
        text += "; changed since it was approved"
    return text


_PIPELINE: dict[str, Callable[[dict], str]] = {
    "checks": _checks_text,
    "checks_passed": lambda p: f"all checks passed on {_short(p.get('head'))}",
    "review": _review_text,
    "diff": _diff_text,
    "proof": _proof_text,
    "merge_claimed": lambda p: f"merge taken up by {p.get('by')} (attempt {p.get('attempt')})",
    "rebase": lambda p: str(p.get("output") or p.get("reason") or "rebased"),
    "scope": lambda p: "changed files outside allowed_paths: " + ", ".join(p.get("outside") or []),
}


def _turn_text(p: dict, full: bool = False) -> str:
    """`turn 3 (1,200 in / 80 out): bash `pytest -q` → exit code 0 …`"""
    head = f"turn {p.get('turn')} ({p.get('tokens_in', 0):,} in / {p.get('tokens_out', 0):,} out)"
    parts = [one_line(p["content"], None if full else 200)] if p.get("content") else []
    for call in p.get("calls", []):
        arguments = one_line(str(call.get("arguments", "")), None if full else 120)
        output = one_line(str(call.get("output", "")), None if full else 160)
        parts.append(f"{call.get('tool')} {arguments} → {output}")
    return f"{head}: " + " | ".join(parts or ["(no tool call)"])


def repos_table(config: Config) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("REPO", "SOURCE", "BASE", "IMAGE", "CHECKS", "CHANNELS"):
        table.add_column(column)
    channels_of: dict[str, list[str]] = {}
    for channel, repo in config.channels.items():
        channels_of.setdefault(repo, []).append(channel)
    for name, repo in config.repos.items():
        default = name == config.default_repo
        table.add_row(
            f"{name} (default)" if default else name,
            str(repo.path or redact(repo.url or "")),
            repo.base_branch,
            repo.image,
            "; ".join(repo.checks) or "-",
            ", ".join(channels_of.get(name, [])) or "-",
        )
    return table


def budget_table(
    day: Day, budgets: Sequence[Budget], waiting: dict[str, int], now: datetime | None = None
) -> Group:
    """`nightcrew budget`: today's spend against each budget, and the tasks it holds."""
    table = Table(box=None, header_style="bold")
    for column in ("BUDGET", "SPENT TODAY", "LIMIT", "LEFT", "WAITING"):
        table.add_column(column, justify="left" if column == "BUDGET" else "right")
    for budget in budgets:
        spent = usd(budget.spent.cost_nanos)
        if budget.spent.unpriced_tokens:
            spent += f" + {budget.spent.unpriced_tokens:,} tokens at unknown cost"
        left = "-" if budget.left_nanos is None else usd(budget.left_nanos)
        held = sum(waiting.values()) if budget.scope is ALL else waiting.get(budget.scope or "", 0)
        table.add_row(
            budget.name,
            spent,
            "-" if budget.limit_nanos is None else usd(budget.limit_nanos),
            Text("reached", style="bold red") if budget.reached else Text(left),
            str(held) if held else "",
        )
    head = Text(f"today: {day.label}, resets in {day.resets_in(now or utcnow())}")
    note = Text(
        "tasks start while today's spend is below their budgets; unknown costs do not count",
        style="dim",
    )
    return Group(head, table, note)


def digest(data: DigestData, tz: ZoneInfo, full: bool = False) -> Group:
    """The digest for `nightcrew digest`: the same sections as in Slack, every task listed;
    `full`: prompts and reasons never cut (a pipe)."""
    since = f"{data.since.astimezone(tz):%a %d %b %H:%M} ({tz.key})"
    if data.empty:
        return Group(Text(f"nothing happened since {since}, and nothing is waiting"))
    until = f"{data.until.astimezone(tz):%a %d %b %H:%M}"
    parts: list[Text] = [Text(f"digest since {since}, until {until}", style="bold")]
    sections = (
        ("awaiting approval (riskiest first)", data.awaiting, State.AWAITING_APPROVAL),
        ("merged", data.merged, State.MERGED),
        ("failed", data.failed, State.FAILED),
        ("running, queued or waiting for input", data.open, State.QUEUED),
    )
    for heading, tasks, state in sections:
        parts.append(Text(f"\n{heading}: {len(tasks) or 'none'}", style=STATE_STYLE[state]))
        for task in tasks:
            line = f"  {task.id:>5}  {task.repo}  {one_line(task.prompt, None if full else 60)}"
            if state is State.QUEUED:  # the open section: say which state
                line += f"  [{task.state.value}]"
            if task.proof is not None:
                line += f"\n         risk {task.risk}; {_digest_proof(task.proof)}"
            elif task.state is State.FAILED:
                reason = one_line(task.reason or "no reason recorded", None if full else 100)
                line += f"\n         {reason}"
            parts.append(plain(line))
    t = data.totals
    parts.append(
        Text(
            f"\ntotals: {t.tasks:,} tasks, {t.turns:,} turns, {t.tokens:,} tokens, "
            f"{cost_text(t.cost_nanos, t.unpriced_tokens)}"
        )
    )
    return Group(*parts)


def _digest_proof(proof: dict) -> str:
    checks = proof.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    review = (proof.get("review") or {}).get("verdict", "none")
    diff = f"+{proof.get('insertions', 0)} -{proof.get('deletions', 0)}"
    return f"checks {passed}/{len(checks)} passed, review {review}, {diff}"


RISK_STYLE = {"high": "bold red", "medium": "yellow", "low": "green"}


def review_table(entries: Sequence[Entry]) -> Table:
    """`nightcrew review`: the tasks awaiting approval, riskiest first, with why."""
    table = Table(box=None, header_style="bold")
    for column in ("#", "ID", "RISK", "REPO", "PROMPT", "WHY"):
        table.add_column(column, justify="right" if column in ("#", "ID") else "left")
    for n, entry in enumerate(entries, 1):
        table.add_row(
            str(n),
            str(entry.task.id),
            Text(entry.level, style=RISK_STYLE.get(entry.level, "magenta")),
            plain(entry.task.repo),
            plain(one_line(entry.task.prompt, 40)),
            plain(entry.why),
        )
    return table
