"""`nightcrew bot` as a real process against the emulator, and the manifest matching the app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from sqlmodel import select

from storage import outbox
from storage.db import make_engine, sqlite_url, transaction
from storage.models import Task
from tests.slack_emulator import SlackEmulator, slash_command
from tests.slack_fixtures import start_bot
from tests.waiting import wait_for

ROOT = Path(__file__).parent.parent
COMMANDS = 12  # the notifier keeps to one post per second per channel


def test_nightcrew_bot_serves_socket_mode_and_posts_the_card(
    tmp_path: Path, git_repo: Path
) -> None:
    (tmp_path / "nightcrew.yaml").write_text(
        f"repos:\n  api:\n    path: {git_repo}\nchannels:\n  C111: api\n"
    )
    with SlackEmulator() as slack:
        proc = start_bot(slack, tmp_path / "home", tmp_path / "nightcrew.yaml")
        try:
            try:
                slack.wait_connected(timeout=30)  # a cold interpreter on a busy CI box
            except TimeoutError:
                proc.terminate()
                raise AssertionError(proc.communicate(timeout=10)[0]) from None
            # A first command in a just-started process: allow more than Slack's 3 s on a busy box.
            envelope = slack.send_envelope(
                "slash_commands", slash_command("add fix the tests"), timeout=10
            )
            assert envelope.ack is not None and "queued task 1" in envelope.ack.payload["text"]
            card = slack.wait_until(lambda: slack.messages("C111"), 30, what="the card")[0]
            assert "fix the tests" in card.all_text
        finally:
            proc.terminate()
            proc.wait(10)
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'nightcrew.db'}")
    with transaction(engine) as session:
        (task,) = session.exec(select(Task)).all()
    assert task.thread_ts == card.ts
    engine.dispose()


def test_nightcrew_bot_over_http_serves_from_worker_processes_and_posts_each_card_once(
    tmp_path: Path, git_repo: Path
) -> None:
    """`--http --workers 2`: two server processes answer slash commands; the notifier runs
    once, in the bot's own process, so each card is posted exactly once. Killing the bot
    outright takes its server down with it."""
    (tmp_path / "nightcrew.yaml").write_text(
        f"repos:\n  api:\n    path: {git_repo}\nchannels:\n  C111: api\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/slack/events"
    with SlackEmulator(tokens=("xoxb-test",)) as slack:
        http = ("--http", "--port", str(port), "--workers", "2")
        proc = start_bot(slack, tmp_path / "home", tmp_path / "nightcrew.yaml", *http)
        try:
            slack.wait_until(
                lambda: len(slack.calls("auth.test")) >= 2 or proc.poll() is not None,
                timeout=60,  # cold interpreters on a busy box
                what="both workers to start",
            )
            assert proc.poll() is None, proc.communicate(timeout=10)[0]
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(
                        lambda i: slack.post_to_app(url, slash_command(f"add task {i}")),
                        range(COMMANDS),
                    )
                )
            assert all(a.status == 200 and "queued task" in a.text for a in answers)
            # The worker processes' front (bot/slack/asgi.py): what is not Slack's is refused.
            command = slash_command("add never queued")
            assert slack.post_to_app(url, command, forge=True).status == 401
            assert slack.post_to_app(url, command, stale=True).status == 401
            broken = slack.post_to_app(url, body="{not json", content_type="application/json")
            assert (broken.status, broken.text) == (400, "malformed request")
            huge = httpx.post(url, content=b"x" * (2 * 1024**2), timeout=30)
            assert huge.status_code == 413
            assert httpx.get(url, timeout=10).status_code == 404  # Slack only POSTs
            health = httpx.get(url.replace("/slack/events", "/healthz"), timeout=10)
            assert health.status_code == 200 and health.json()["role"] == "bot", health.text
            cards = slack.wait_until(
                lambda: len(slack.messages("C111")) >= COMMANDS and slack.messages("C111"),
                timeout=60,
                what="every card",
            )
            # Every card row settled: a second notifier would have had them to post too.
            database = make_engine(sqlite_url(tmp_path / "home"))
            try:

                def settled() -> bool:
                    with transaction(database) as session:
                        return not outbox.pending(session)

                wait_for(settled, 30, "every card's outbox row to be settled")
            finally:
                database.dispose()
            assert len(slack.messages("C111")) == COMMANDS
            assert sorted(c.text.split(": ", 1)[1] for c in cards) == sorted(
                f"task {i}" for i in range(COMMANDS)
            )
        finally:
            proc.kill()  # no chance to clean up: the server must still go
            proc.wait(10)

        def closed() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
            except OSError:
                return True
            return False

        wait_for(closed, 20, "the HTTP server to go with the bot process")


def test_nightcrew_bot_without_tokens_says_how_to_connect(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "bot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "SLACK_BOT_TOKEN is not set" in result.stderr


def test_the_manifest_declares_what_the_app_listens_to() -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/agent"]
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {
        "app_mention",
        "message.channels",
        "message.groups",
        "message.im",
        "app_home_opened",
    } <= events
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write", "reactions:write", "app_mentions:read"} <= scopes
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
