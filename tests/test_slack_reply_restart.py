"""A reply with files survives the bot dying between its ack and the fetch of its files.

Slack sends an acked event once: the reply is written before the ack, with what Slack said
of its files, and waits for them. Here a real `nightcrew bot` process (Socket Mode, against
the Slack emulator) acks a `file_share` reply, starts downloading its file (Slack holds the
download), and is SIGKILLed. While it is down, a real worker runs the task in Docker against
the scripted model: the waiting reply does not reach the agent. The bot comes back, fetches
the file again, and the agent's next model request carries the reply and the file's content,
exactly once."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine
from sqlmodel import select

from storage.db import transaction
from storage.models import Nudge
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator, slash_command
from tests.slack_fixtures import card_of, start_bot
from tests.waiting import wait_for
from tests.worker_fixtures import HOLD, RunWorker, release

REQUESTER = "U111"
CONTENT = "KeyError: 'user_id' at calc.py:2 (seen once)\n"


def the_nudge(engine: Engine) -> Nudge | None:
    with transaction(engine) as session:
        return session.exec(select(Nudge)).first()


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)  # a loaded 2-core box can take a while to join the threads
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate(timeout=10)[0]


def test_a_file_reply_acked_by_a_bot_killed_before_the_fetch_reaches_the_agent_once(
    slack: SlackEmulator,
    engine: Engine,
    db_url: str,
    make_worker: RunWorker,
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
    test_executor: str,
) -> None:
    monkeypatch.setenv("NIGHTCREW_DATABASE_URL", db_url)
    config = tmp_path / "nightcrew.yaml"
    config.write_text(f"repos:\n  app:\n    path: {project}\nchannels:\n  C111: app\n")
    home = tmp_path / "bot-home"
    bot = start_bot(slack, home, config)
    try:
        slack.wait_connected(timeout=60)  # a cold interpreter on a busy box
        slack.send_envelope(
            "slash_commands", slash_command("fix add()", user_id=REQUESTER), timeout=10
        )
        thread = card_of(slack, engine).ts
        held = slack.hold("file_download")
        files = [("err.log", CONTENT.encode(), "text/plain")]
        shared = slack.share_file_as_user("C111", REQUESTER, "the trace", files, thread_ts=thread)
        slack.send_envelope("events_api", shared)  # returns once the bot acked it
        slack.wait_until(lambda: slack.calls("file_download"), what="the bot fetching the file")
        bot.kill()  # after the ack, before the file's content came back
        bot.wait(10)
        held.set()
        nudge = the_nudge(engine)
        assert nudge is not None and nudge.files_pending, "the reply was written before the ack"
        assert nudge.text == "the trace" and CONTENT not in nudge.text

        script = [
            reply(tool_call("bash", {"command": HOLD})),
            reply(tool_call("finish", {"summary": "done"})),
        ]
        with ScriptedLLM(script) as llm:
            worker = make_worker(llm)
            running = threading.Thread(target=worker.work, kwargs={"drain": True})
            running.start()
            try:
                wait_for(lambda: len(llm.requests) == 1, 90, "the agent's first turn")
                first = str(llm.requests[0]["messages"])
                assert "the trace" not in first, "a reply whose files are pending was taken"
                bot = start_bot(slack, home, config)
                slack.wait_connected(total=2, timeout=60)

                def done() -> bool:
                    found = the_nudge(engine)
                    return found is not None and not found.files_pending

                wait_for(done, 20, "the restarted bot fetching the file")
            finally:
                release(docker_client, test_executor)
                running.join(120)
        assert len(llm.requests) == 2
        second = [m["content"] for m in llm.requests[1]["messages"] if m["role"] == "user"]
        told = "\n".join(str(text) for text in second)
        assert "the trace" in told and 'File "err.log"' in told
        assert told.count(CONTENT.strip()) == 1, "the file's content exactly once"
        assert len([c for c in slack.calls("file_download") if c.status == 200]) == 2
    finally:
        output = stop(bot)
    assert "Traceback" not in output, output
