"""The commands that queue and read tasks: add, review, ls, show, log, diff."""

from __future__ import annotations

import time

import typer

from bot import actions
from bot.actions import ActionError
from bot.cli.composition import config, engine, local_user, settings, signer
from bot.cli.console import AS_JSON, NO_HEADER, BadValue, err, out, user_errors
from bot.cli.plans import show_plan
from bot.terminal import records, render
from executor.config.schema import ConfigError
from storage.db import transaction
from storage.lifecycle import WORKING, State
from storage.models import Priority, Task
from storage.tasks import events, get_task, list_tasks, nudges


def add(
    prompt: str = typer.Argument(..., help="What the agent should do."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    priority: str = typer.Option("normal", "--priority", "-p", help="high, normal or low."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the new task's id."),
    after: str = typer.Option(
        "", "--after", help="Wait until these tasks are merged (ids, comma-separated)."
    ),
) -> None:
    """Queue a task."""
    with user_errors():
        try:
            prio = Priority[priority.upper()]
        except KeyError:
            raise BadValue(f"priority {priority!r} is not one of high, normal, low") from None
        cfg = config()
        issue = actions.from_issue(cfg, prompt, repo)  # an issue URL: fetched as the prompt
        try:
            repo_name_ = issue[0] if issue else cfg.repo_for(repo)
        except ConfigError as exc:  # an unknown --repo is the user's slip, not a broken file
            raise ActionError(str(exc)) from None
        with transaction(engine()) as session:
            prerequisites = [actions.parse_task_id(i) for i in after.split(",") if i.strip()]
            outcome = actions.add(
                session,
                repo=repo_name_,
                prompt=prompt,
                requester=local_user(),
                priority=prio,
                issue_url=issue[1] if issue else None,
                after=prerequisites,
            )
    out.print(outcome.task.id if quiet else outcome.message)


def review(as_json: bool = AS_JSON) -> None:
    """The tasks awaiting approval, riskiest first, with why (the same order as `/agent
    review` and the App Home), and a link to the review page."""
    from bot import review as queue

    with user_errors(), transaction(engine()) as session:
        entries = queue.waiting(session)
    if as_json:
        out.json([records.review_entry(e.task, e.score, e.reasons) for e in entries])
        return
    if not entries:
        out.print("nothing awaits approval")
        return
    out.print(render.review_table(entries))
    out.print(f"page: {signer().review_url(local_user())}", soft_wrap=True, markup=False)


def ls(
    state: list[str] = typer.Option([], "--state", "-s", help="Only these states (repeatable)."),
    all_: bool = typer.Option(False, "--all", "-a", help="Include merged, cancelled, rejected."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Only this repo."),
    mine: bool = typer.Option(False, "--mine", help="Only tasks you (the local user) asked for."),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many, newest first."),
    as_json: bool = AS_JSON,
    no_header: bool = NO_HEADER,
) -> None:
    """List tasks, open ones unless --all or --state; the filters combine."""
    with user_errors():
        states = [_state(s) for s in state] or None
        with transaction(engine()) as session:
            tasks = list_tasks(
                session,
                states=states,
                include_closed=all_,
                repo=repo,
                requester=local_user() if mine else None,
                limit=limit,
            )
    if as_json:
        out.json([records.task(t) for t in tasks])
        return
    if not tasks:  # a message for people; a script sees the header and no rows
        note = "no tasks" + ("" if all_ or states else " open (use --all to see closed ones)")
        if out.terminal:
            out.print(note)
            return
        err.print(note)
    out.header = not no_header
    out.print(render.task_table(tasks, prompt_width=60 if out.terminal else None))


def _state(text: str) -> State:
    try:
        return State(text.strip().lower().replace("-", "_"))
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise BadValue(f"unknown state {text!r}; states are: {names}") from None


def show(
    task_id: str = typer.Argument(..., help="Task id (or p<id> for a plan)."),
    with_diff: bool = typer.Option(False, "--diff", help="Also print the task's full diff."),
    as_json: bool = AS_JSON,
) -> None:
    """Show one task: state, accounting, time spent, git refs, proof, nudges, recent
    events and its page's link. `p<id>` shows a plan and its tasks."""
    if task_id.strip().lower().startswith("p"):
        return show_plan(task_id.strip()[1:])
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            task = get_task(session, tid)
            log = events(session, tid)
            every = nudges(session, tid)
        taken = [n for n in every if n.deleted_at is None]  # not taken back
        proof = next((e.payload for e in reversed(log) if e.kind == "proof"), None)
        runs, times = render.claims(log), render.time_split(log)
        edits = records.nudge_edits(log)
        if as_json:  # withdrawn nudges too, flagged (their words are gone)
            out.json(
                records.detail(
                    task, every, log[-10:], proof=proof, runs=runs, times=times, edits=edits
                )
            )
        else:
            out.print(
                render.task_detail(
                    task, taken, log[-10:], proof=proof, runs=runs, times=times, edited=edits
                )
            )
            page = signer().task_url(tid, local_user())  # as `show p<id>` and `review` do
            out.print(f"page: {page}", soft_wrap=True, markup=False)
        if with_diff:
            _print_diff(task)


def log(
    task_id: str = typer.Argument(..., help="Task id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per event and line (docs/CLI.md)."
    ),
) -> None:
    """Print a task's event log; --follow waits for more until the task stops working."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        last = 0
        while True:
            with transaction(engine()) as session:
                batch = events(session, tid, after_id=last)
                state = State(get_task(session, tid).state)
            for event in batch:
                if as_json:
                    out.json(records.event(event))
                else:
                    out.print(render.event_line(event, full=not out.terminal))
                last = event.id or last
            if not follow or (state not in WORKING and state is not State.QUEUED):
                break
            try:
                time.sleep(1.0)
            except KeyboardInterrupt:
                break


def diff(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Print a task's full diff: coloured on a terminal, and in a pipe exactly as `git apply`
    takes it on the base branch."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            task = get_task(session, tid)
        _print_diff(task)


def _print_diff(task: Task) -> None:
    from bot.terminal.diff import coloured
    from executor.git.patch import GitError, task_patch
    from executor.git.workspace import canonical_path

    repo = config().repos.get(task.repo)
    if repo is None:
        raise ActionError(f"task {task.id}: repo {task.repo!r} is not in the configuration")
    if not task.head_commit:
        raise ActionError(f"task {task.id} has no commits yet ({task.state.value})")
    canonical = canonical_path(settings().home, task.repo, repo)
    landed = task.base_commit if task.state is State.MERGED else None
    try:
        patch = task_patch(canonical, repo.base_branch, task.head_commit, landed_from=landed)
    except GitError as exc:
        raise ActionError(f"task {task.id}: cannot read its diff: {exc}") from None
    if not patch:
        err.print(f"task {task.id} changes nothing")
    elif out.terminal:
        out.print(coloured(patch))
    else:  # a pipe: byte for byte, for `git apply`
        out.verbatim(patch)
