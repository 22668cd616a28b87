"""The whole diff in the task's thread as a file (Slack's upload flow against the emulator):
once per park, also when the notifier dies after Slack took the file; the interdiff since an
approval as a second file; a diff too big for a phone cut with a link to the page; the
emulator's upload API with Slack's shapes, limits and errors."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine
from sqlmodel import select

from bot.links import Signer
from bot.slack.app import SlackEnv
from bot.slack.notifier import Notifier, Tunables
from bot.slack.run import notifier_thread
from storage import outbox
from storage.db import transaction
from storage.lifecycle import State
from storage.models import TaskEvent
from storage.tasks import get_task, record, transition
from tests.claiming import claim
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator
from tests.slack_fixtures import FAST, card_of
from tests.test_slack_bot import _notifier_process
from tests.test_web_pages import text_of
from tests.web_fixtures import Web, parked
from tests.worker_fixtures import RunWorker, add_task

CUT = Tunables(**{**FAST.__dict__, "file_max_bytes": 400})


@pytest.fixture
def paged_notifier(engine: Engine, env: SlackEnv, web: Web) -> Iterator[Notifier]:
    with notifier_thread(engine, env, FAST, web.signer) as notifier:
        yield notifier


def settled(engine: Engine) -> bool:
    with transaction(engine) as session:
        return not outbox.pending(session)


def file_data(slack: SlackEmulator, file_id: str) -> bytes:
    data = slack.workspace.files.uploads[file_id].data
    assert data is not None
    return data


def test_a_parked_task_shares_its_whole_diff_once_with_a_link_to_its_page(
    slack: SlackEmulator, engine: Engine, web: Web, paged_notifier: Notifier
) -> None:
    task_id = parked(engine)
    card = card_of(slack, engine, task_id)
    (shared,) = slack.wait_until(lambda: slack.uploaded("C111"), what="the diff file")
    assert shared.thread_ts == card.ts  # in the task's thread
    (file,) = shared.files
    assert file["name"] == f"task-{task_id}.diff" and file["filetype"] == "diff"
    assert b"+    return a + b" in file_data(slack, file["id"])
    # The comment links the page; the card's Open button too, and it opens.
    assert "/t/" in shared.text and "Open" in shared.text
    slack.wait_until(lambda: settled(engine), what="the outbox settled")
    card = card_of(slack, engine, task_id)
    (button,) = [b for b in card.buttons if b.get("url")]
    page = httpx.get(button["url"])
    assert page.status_code == 200 and "+    return a + b" in text_of(page.text)
    # A card edit later (a new park with the same diff, say) shares nothing again.
    with transaction(engine) as session:
        outbox.request_card(session, task_id)
    slack.wait_until(lambda: settled(engine))
    assert len(slack.uploaded("C111")) == 1
    assert len(slack.calls("files.completeUploadExternal")) == 1


def test_changes_since_an_approval_come_as_a_second_file(
    slack: SlackEmulator, engine: Engine, web: Web, paged_notifier: Notifier
) -> None:
    since = {"approved": "a" * 40, "commit": "b" * 40, "diff": "--- a\n+++ b\n+# later\n"}
    task_id = parked(engine, since_approval=since)
    files = slack.wait_until(
        lambda: (
            [f for m in slack.uploaded("C111") for f in m.files][1:]
            and [f for m in slack.uploaded("C111") for f in m.files]
        ),
        what="two files",
    )
    names = sorted(f["name"] for f in files)
    assert names == [f"task-{task_id}-since-approval.diff", f"task-{task_id}.diff"]
    later = next(f for f in files if "since" in f["name"])
    assert file_data(slack, later["id"]) == b"--- a\n+++ b\n+# later\n"


def test_a_huge_diff_is_cut_at_a_line_and_the_comment_says_so(
    slack: SlackEmulator, engine: Engine, env: SlackEnv, web: Web
) -> None:
    lines = "".join(f"+line {n}\n" for n in range(200))
    diff = "diff --git a/big.txt b/big.txt\n--- a/big.txt\n+++ b/big.txt\n@@ -0,0 +1,200 @@\n"
    task_id = parked(engine, diff=diff + lines)
    with notifier_thread(engine, env, CUT, web.signer):
        (shared,) = slack.wait_until(lambda: slack.uploaded("C111"), what="the file")
    data = file_data(slack, shared.files[0]["id"])
    assert len(data) <= 400 and data.endswith(b"\n")  # whole lines only
    assert "cut:" in shared.text and "more bytes" in shared.text and f"/t/{task_id}?" in shared.text


def test_a_workspace_refusing_large_files_is_recorded_not_retried(
    slack: SlackEmulator, engine: Engine, paged_notifier: Notifier
) -> None:
    slack.upload_limit(10)
    task_id = parked(engine)
    slack.wait_until(lambda: settled(engine), what="the outbox settled")
    assert slack.uploaded("C111") == []
    assert len(slack.calls("files.getUploadURLExternal")) == 1
    with transaction(engine) as session:
        errors = [
            e.payload
            for e in session.exec(
                select(TaskEvent).where(
                    TaskEvent.task_id == task_id, TaskEvent.kind == "slack_error"
                )
            )
        ]
    assert errors == [{"kind": "file", "error": "file_upload_size_restricted", "channel": "C111"}]


def test_a_notifier_killed_after_slack_shared_the_file_shares_it_once(
    slack: SlackEmulator, engine: Engine
) -> None:
    """SIGKILL between Slack sharing the file and the notifier learning so: the restarted
    notifier finds the file in the thread instead of sharing the diff again."""
    task_id = parked(engine)
    release = slack.hold("files.completeUploadExternal")
    proc = _notifier_process(engine, slack)
    try:
        slack.wait_until(
            lambda: slack.calls("files.completeUploadExternal") or proc.poll() is not None,
            timeout=60,
            what="the share",
        )
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        release.set()
    assert len(slack.uploaded("C111")) == 1  # Slack has it; the database does not know
    restarted = _notifier_process(engine, slack)
    try:
        slack.wait_until(lambda: settled(engine), timeout=60, what="every row settled")
    finally:
        restarted.terminate()
        restarted.wait(10)
    assert len(slack.uploaded("C111")) == 1
    assert len(slack.calls("files.completeUploadExternal")) == 1
    with transaction(engine) as session:
        assert get_task(session, task_id).state is State.AWAITING_APPROVAL


def test_each_park_after_changes_shares_the_new_diff(
    slack: SlackEmulator, engine: Engine, paged_notifier: Notifier
) -> None:
    task_id = parked(engine)
    slack.wait_until(lambda: slack.uploaded("C111"), what="the first file")
    with transaction(engine) as session:  # changes requested, a new round, parked again
        transition(session, task_id, State.QUEUED, reason="changes requested", actor="U111")
    assert claim(engine, running=True).id == task_id
    with transaction(engine) as session:
        record(session, task_id, "diff", {"commit": "d" * 40, "diff": "+second round\n", "cut": 0})
        record(session, task_id, "proof", {"commit": "d" * 40, "checks": []})
        transition(session, task_id, State.AWAITING_APPROVAL, reason="again", actor="w1")
    shared = slack.wait_until(lambda: slack.uploaded("C111")[1:], what="the second file")
    assert file_data(slack, shared[0].files[0]["id"]) == b"+second round\n"


# --- the emulator's upload API, as a client sees it -------------------------------------


def test_the_emulated_upload_flow_has_slacks_shapes_limits_and_errors(
    slack: SlackEmulator,
) -> None:
    client = WebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
    root = client.chat_postMessage(channel="C1", text="card")["ts"]

    def error(call: object, **kw: object) -> str:
        with pytest.raises(SlackApiError) as caught:
            call(**kw)  # type: ignore[operator]
        return str(caught.value.response["error"])

    get = client.files_getUploadURLExternal
    assert error(get, filename="x.diff", length=0) == "missing_argument"
    assert error(get, filename="x" * 256, length=3) == "invalid_arguments"
    slack.upload_limit(100)
    assert error(get, filename="x.diff", length=101) == "file_upload_size_restricted"
    answer = get(filename="task-1.diff", length=5)
    assert set(answer.data) >= {"ok", "upload_url", "file_id"}
    assert answer["file_id"].startswith("F")
    complete = client.files_completeUploadExternal
    # Not uploaded yet, unknown, or malformed: refused.
    assert error(complete, files=[{"id": answer["file_id"]}]) == "file_not_found"
    assert error(complete, files=[{"id": "FNOPE"}]) == "file_not_found"
    # The bytes: exactly the announced length, once.
    assert httpx.post(answer["upload_url"], content=b"abc").status_code == 400
    ok = httpx.post(answer["upload_url"], content=b"hello")
    assert ok.status_code == 200 and ok.text == "OK - 5"
    assert httpx.post(answer["upload_url"], content=b"hello").status_code == 404
    bad_thread = "1.000"
    assert (
        error(complete, files=[{"id": answer["file_id"]}], channel_id="C1", thread_ts=bad_thread)
        == "invalid_thread_ts"
    )
    done = complete(
        files=[{"id": answer["file_id"], "title": "task 1"}],
        channel_id="C1",
        thread_ts=root,
        initial_comment="the diff",
    )
    assert done["files"] == [{"id": answer["file_id"], "title": "task 1"}]
    (message,) = slack.uploaded("C1")
    assert message.thread_ts == root and message.text == "the diff"
    replies = client.conversations_replies(channel="C1", ts=root)["messages"]
    assert replies[-1]["files"][0]["id"] == answer["file_id"]
    assert replies[-1]["files"][0]["name"] == "task-1.diff"
    # A multipart upload (as curl -F sends it) works too.
    second = get(filename="b.txt", length=2)
    form = httpx.post(second["upload_url"], files={"file": ("b.txt", b"hi")})
    assert form.status_code == 200


def test_signer_links_carry_no_secret() -> None:
    url = Signer(b"k" * 64, "https://review.example").task_url(7, "U1")
    assert url.startswith("https://review.example/t/7?") and "k" * 8 not in url


def test_end_to_end_a_scripted_agent_parks_and_the_thread_and_page_show_its_diff(
    slack: SlackEmulator,
    engine: Engine,
    web: Web,
    paged_notifier: Notifier,
    make_worker: RunWorker,
    project: Path,
) -> None:
    """A real worker in Docker runs a scripted agent that fixes calc.py; the task parks; its
    whole diff lands in the card's thread once; the card's Open button opens the page, which
    shows the added line."""
    task_id = add_task(engine)
    card = card_of(slack, engine, task_id)
    script = [
        reply(
            tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
        ),
        reply(tool_call("finish", {"summary": "add() adds"})),
    ]
    with ScriptedLLM(script) as llm:
        assert (
            make_worker(llm, repo_options={"checks": ["python3 -m unittest -q"]}).work(drain=True)
            == 1
        )
    with transaction(engine) as session:
        done = get_task(session, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    (shared,) = slack.wait_until(lambda: slack.uploaded("C1"), timeout=15, what="the diff")
    assert shared.thread_ts == card.ts and shared.files[0]["name"] == f"task-{task_id}.diff"
    data = file_data(slack, shared.files[0]["id"])
    assert b"-    return a - b\n+    return a + b" in data
    slack.wait_until(lambda: settled(engine), what="the outbox settled")
    card = card_of(slack, engine, task_id)
    (button,) = [b for b in card.buttons if b.get("url")]
    page = httpx.get(button["url"])
    assert page.status_code == 200
    shown = text_of(page.text)
    assert "+    return a + b" in shown and done.head_commit and done.head_commit in shown
    assert len(slack.uploaded("C1")) == 1
