"""Commit messages made from the task, for a history a team would keep.

A title from the task's prompt, the agent's summary as the body, and a trailer that names
the task for people: `Nightcrew-Task` on the commit that lands it, `Nightcrew-Work` on the
agent's work commits. The trailer is never read back: what a merge did is
known from the database alone (executor/git/merge.py). The prompt and the summary are
untrusted text (a Slack user's, a model's): control characters are dropped, so no escape
sequence reaches a `git log` on someone's terminal, and the body is bounded."""

from __future__ import annotations

from storage.text import clean

TRAILER = "Nightcrew-Task"  # on the commit that lands the task (merge or squash)
WORK_TRAILER = "Nightcrew-Work"  # on the agent's work commits nightcrew makes
TITLE_CHARS = 72  # what `git log --oneline` and most forges show in full
BODY_CHARS = 8000


def title(task_id: int, prompt: str) -> str:
    """The prompt on one line, cut at a word within TITLE_CHARS."""
    flat = " ".join(clean(prompt).split())
    if len(flat) <= TITLE_CHARS:
        return flat or f"task {task_id}"
    cut = flat[: TITLE_CHARS - 1].rsplit(" ", 1)[0]
    return cut + "…"


def body(text: str | None) -> str:
    lines = [line.rstrip() for line in clean(text or "").strip().splitlines()]
    kept = "\n".join(lines)
    return kept if len(kept) <= BODY_CHARS else kept[: BODY_CHARS - 1] + "…"


def compose(
    task_id: int, prompt: str, summary: str | None, trailers: dict[str, str] | None = None
) -> str:
    """Title, blank line, the summary (if any), blank line, trailers."""
    lines = [f"{TRAILER}: {task_id}"]
    lines += [f"{key}: {' '.join(clean(value).split())}" for key, value in (trailers or {}).items()]
    parts = [title(task_id, prompt), body(summary), "\n".join(lines)]
    return "\n\n".join(p for p in parts if p) + "\n"


def work_message(task_id: int, prompt: str, summary: str | None) -> str:
    """The agent's commit of its work: with its summary once it finished, else marked as
    unfinished (the task failed, was cancelled or waits for input). Its trailer is
    `Nightcrew-Work`: `Nightcrew-Task` marks the one commit that landed the task."""
    body_ = summary or "Unfinished: the agent had not finished yet."
    parts = [title(task_id, prompt), body(body_), f"{WORK_TRAILER}: {task_id}"]
    return "\n\n".join(p for p in parts if p) + "\n"
