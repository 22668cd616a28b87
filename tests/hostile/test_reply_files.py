"""The bot token never leaves Slack's hosts through a reply's file. A file object whose
address points elsewhere (another host, another port, plain HTTP, a user part that makes
`files.slack.com@evil` a different host), a stub resolved by files.info to such an address,
and a download Slack answers with a redirect: none of them sends the token anywhere but the
configured Slack host, and the person and the agent are told the file was not passed on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import App
from sqlalchemy import Engine
from sqlmodel import col, select

from bot import actions
from bot.slack import pending_files
from bot.slack.app import SlackEnv, build_app, files_client
from bot.slack.handle import thread_reply
from bot.slack.notifier import Notifier
from executor.config.schema import Config, RepoConfig
from storage import nudge_files
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Nudge
from storage.tasks import transition
from tests.slack_emulator import SlackEmulator, slash_command
from tests.slack_fixtures import card_of
from tests.waiting import wait_for

REQUESTER = "U111"


class Trap:
    """An HTTP server that records every request it gets, with its headers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                trap.seen.append({"path": self.path, **dict(self.headers.items())})
                body = b"stolen"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    found = Trap()
    yield found
    found.close()


@pytest.fixture
def app(engine: Engine, env: SlackEnv, tmp_path: Path) -> App:
    config = Config(repos={"api": RepoConfig(path=tmp_path)}, channels={"C111": "api"})
    return build_app(engine, lambda: config, env)


def nudges(engine: Engine) -> list[str]:
    """The notes as the agent would read them (their files fetched, or given up on)."""
    with transaction(engine) as session:
        found = session.exec(select(Nudge).where(col(Nudge.files_pending).is_(False)))
        return [n.text for n in sorted(found.all(), key=lambda n: n.id or 0)]


def test_a_file_pointing_away_from_slack_is_never_fetched_with_the_token(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier, trap: Trap
) -> None:
    slack.post_to_app(url, slash_command("fix the tests", user_id=REQUESTER))
    thread = card_of(slack, engine).ts
    elsewhere = [
        f"http://127.0.0.1:{trap.port}/files-pri/T111-F1/download/a.txt",  # another port
        f"http://files.slack.com@127.0.0.1:{trap.port}/b.txt",  # a user part: another host
        f"http://localhost:{trap.port}/c.txt",  # another name for this machine
        "http://files.slack.com/d.txt",  # Slack's file host, but not over HTTPS
    ]
    for n, address in enumerate(elsewhere):
        event = slack.share_file_as_user(
            "C111",
            REQUESTER,
            f"reply {n}",
            [(f"f{n}.txt", b"text", "text/plain")],
            thread_ts=thread,
            url_private_download=address,
            url_private=address,
        )
        slack.post_to_app(url, event)
    wait_for(lambda: len(nudges(engine)) == len(elsewhere), 10, "every reply as a nudge")
    for text in nudges(engine):
        assert "its address is not Slack's file host, so it was not fetched" in text
        assert "stolen" not in text
    wait_for(lambda: len(slack.ephemerals(REQUESTER)) == len(elsewhere), 10, "each told")
    assert all("not Slack's file host" in e.text for e in slack.ephemerals(REQUESTER))
    assert trap.seen == []


def test_a_stub_resolved_elsewhere_and_a_redirect_are_not_followed(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier, trap: Trap
) -> None:
    slack.post_to_app(url, slash_command("fix the tests", user_id=REQUESTER))
    thread = card_of(slack, engine).ts
    away = f"http://127.0.0.1:{trap.port}/x.txt"
    stub = slack.share_file_as_user(
        "C111",
        REQUESTER,
        "stub",
        [("s.txt", b"t", "text/plain")],
        thread_ts=thread,
        url_private_download=away,
        url_private=away,
    )
    file_id = stub["event"]["files"][0]["id"]
    stub["event"]["files"] = [{"id": file_id, "file_access": "check_file_info"}]
    slack.post_to_app(url, stub)
    wait_for(lambda: len(nudges(engine)) == 1, 10, "the stub's reply")
    assert [c.params.get("file") for c in slack.calls("files.info")] == [file_id]
    slack.redirect_files(away)
    moved = slack.share_file_as_user(
        "C111", REQUESTER, "moved", [("m.txt", b"t", "text/plain")], thread_ts=thread
    )
    slack.post_to_app(url, moved)
    wait_for(lambda: len(nudges(engine)) == 2, 10, "the redirected reply")
    assert "Slack answered HTTP 302" in nudges(engine)[1]
    assert [c.token for c in slack.calls("file_download")] == [slack.bot_token]  # Slack's own
    assert trap.seen == []


def test_files_fetched_again_after_a_restart_go_to_slack_only(
    slack: SlackEmulator, engine: Engine, env: SlackEnv, tmp_path: Path, trap: Trap
) -> None:
    """A reply's file objects wait in the database between the ack and their fetch; the
    fetch a restarted bot makes from them checks every address as the first one would."""
    config = Config(repos={"api": RepoConfig(path=tmp_path)}, channels={"C111": "api"})
    with transaction(engine) as session:
        actions.add(session, repo="api", prompt="fix it", requester=REQUESTER, channel="C111")
        transition(session, 1, State.PREPARING, actor="w", thread_ts="100.1")
    away = f"http://files.slack.com@127.0.0.1:{trap.port}/b.txt"
    event = slack.share_file_as_user(
        "C111",
        REQUESTER,
        "see file",
        [("b.txt", b"text", "text/plain")],
        thread_ts="100.1",
        url_private_download=away,
        url_private=away,
    )["event"]
    # What the ack path writes: the reply with Slack's words for its files, nothing fetched.
    refs = nudge_files.refs(event["files"])
    thread_reply(engine, config, "C111", "100.1", event["ts"], REQUESTER, "see file", files=refs)
    assert nudges(engine) == []  # the agent does not get it yet
    assert pending_files.recover(engine, files_client(env), cap=1000, older_than_s=0) == 1
    (text,) = nudges(engine)
    assert "its address is not Slack's file host, so it was not fetched" in text
    assert trap.seen == [] and slack.calls("file_download") == []
