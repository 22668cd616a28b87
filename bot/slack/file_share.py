"""A task's diff shared as a file in its thread when it parks for approval: which files to
queue (the newest diff, and the interdiff when it changed since an approval), what each one
holds (cut at a line beyond the cap, its comment linking the page), and the share itself,
once: Slack's three steps (`files.getUploadURLExternal`, the upload, `files.completeUpload
External`) with the file id recorded at the start of the share, so a later attempt whose share
got no answer looks for a message holding that file first."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from sqlmodel import Session, col, select

from bot.slack.delivery import Delivery
from bot.slack.exactly_once import find_shared_file
from bot.slack.retry_policy import Retry
from storage import outbox
from storage.models import Outbox, Task, TaskEvent

log = logging.getLogger("bot.slack.notifier")  # one logger for all of the notifier


def share_file(d: Delivery, row: Outbox, task: Task) -> None:
    """Share a file (the whole diff, or the interdiff since an approval) in the task's
    thread, once."""
    assert row.id is not None and task.id is not None and task.channel
    if task.thread_ts is None:
        with d.transaction() as session:
            waiting = outbox.has_pending_card(session, task.id)
        if waiting:
            d.defer(row, d.tunables.idle_poll_s)
        else:
            d.give_up(row, "no card, so no thread")
        return
    earlier = row.payload.get("file_id")
    if (
        row.sent_at is not None
        and earlier
        and find_shared_file(d, row, task.channel, task.thread_ts, str(earlier))
    ):
        log.info("outbox row %s: file %s already shared; not again", row.id, earlier)
        d.delivered(row)
        return
    with d.transaction() as session:
        event = session.get(TaskEvent, row.payload.get("event"))
        event_payload = dict(event.payload) if event is not None else {}
    content = diff_file(
        task.id,
        str(row.payload.get("what") or ""),
        event_payload,
        cap=d.tunables.file_max_bytes,
        page=d.task_page(task),
    )
    if content is None:
        d.delivered(row)  # nothing to share
        return
    name, data, comment = content
    answer = d.call(d.client.files_getUploadURLExternal, filename=name, length=len(data))
    upload(str(answer["upload_url"]), data)
    file_id = str(answer["file_id"])
    d.settle(lambda s: outbox.note_upload(s, row.id, file_id))
    title = name.removesuffix(".diff")
    try:
        d.call(
            d.client.files_completeUploadExternal,
            files=[{"id": file_id, "title": title}],
            channel_id=task.channel,
            thread_ts=task.thread_ts,
            initial_comment=comment,
        )
    except Retry as exc:
        exc.not_sent = exc.answered
        raise
    d.sent(row)
    d.delivered(row)


def upload(url: str, data: bytes) -> None:
    """The bytes to the upload URL Slack gave (a POST, not a Web API method)."""
    try:
        answer = httpx.post(url, content=data, timeout=30)
    except httpx.HTTPError as exc:
        raise Retry(f"upload: {type(exc).__name__}", answered=True) from None
    if answer.status_code != 200:
        raise Retry(f"upload: HTTP {answer.status_code}", answered=True)


def diff_file(
    task_id: int, what: str, payload: dict[str, Any], *, cap: int, page: str | None
) -> tuple[str, bytes, str] | None:
    """(file name, bytes, the comment shared with it) for `what` ("diff": a diff event's
    `payload`, "interdiff": a proof event's), or None when there is no diff. Pure."""
    cut = 0
    if what == "interdiff":
        since = payload.get("since_approval") or {}
        text = str(since.get("diff") or "")
        approved = str(since.get("approved") or "")[:12]
        name = f"task-{task_id}-since-approval.diff"
        intro = f"What changed in task {task_id} since the approved `{approved}`"
    else:
        text, cut = str(payload.get("diff") or ""), int(payload.get("cut") or 0)
        name = f"task-{task_id}.diff"
        intro = f"The whole diff of task {task_id}"
    if not text.strip():
        return None
    data = text.encode()
    if len(data) > cap:
        kept = data[:cap].rsplit(b"\n", 1)[0] + b"\n"
        cut += len(data) - len(kept)
        data = kept
    comment = intro
    if cut:
        comment += f" (cut: {cut:,} more bytes not in this file)"
    if page:
        comment += f"; all of it on <{page}|the task's page>" if cut else f" · <{page}|Open>"
    return name, data, comment


def queue_files(session: Session, task_id: int) -> None:
    """The task parked for approval: its newest diff (and the interdiff, if it changed since
    an approval) goes to the thread as files, unless that diff was queued before (a park
    with no new work, such as a merge that failed, shares nothing again)."""
    newest = {
        kind: session.exec(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.kind == kind)
            .order_by(col(TaskEvent.id).desc())
        ).first()
        for kind in ("diff", "proof")
    }
    queued = session.exec(
        select(Outbox).where(Outbox.task_id == task_id, Outbox.kind == "file")
    ).all()
    done = {(r.payload.get("what"), r.payload.get("event")) for r in queued}
    diff, proof = newest["diff"], newest["proof"]
    if diff is not None and diff.id is not None and ("diff", diff.id) not in done:
        outbox.queue_file(session, task_id, what="diff", event_id=diff.id)
    if (
        proof is not None
        and proof.id is not None
        and proof.payload.get("since_approval")
        and ("interdiff", proof.id) not in done
    ):
        outbox.queue_file(session, task_id, what="interdiff", event_id=proof.id)
