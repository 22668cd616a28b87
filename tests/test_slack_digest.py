"""The digest and schedules through Slack, against the local Slack emulator: `/agent digest`
and `/agent schedule …` over signed HTTP, the scheduled digest delivered by the notifier to a
channel and by DM (Block Kit limits checked by the emulator), and its buttons working."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from bot.slack import blocks
from bot.slack import digest_send as digest
from bot.slack.notifier import Notifier
from executor.config import crontime
from executor.config.schema import Config
from storage import digests
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Outbox, Schedule, Task
from tests.digest_fixtures import config, put_task
from tests.slack_emulator import SlackEmulator, block_action, slash_command
from tests.slack_emulator.workspace import dm_id
from tests.slack_fixtures import serve_http, start_bot

REQUESTER, STRANGER = "U111", "U222"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return config(tmp_path, cron="0 8 * * *", timezone="UTC", channels=("C900",))


@pytest.fixture
def url(engine: Engine, slack: SlackEmulator, cfg: Config) -> Iterator[str]:
    with serve_http(engine, slack, cfg) as url:
        yield url


def command(slack: SlackEmulator, url: str, text: str, user: str = REQUESTER) -> str:
    answer = slack.post_to_app(url, slash_command(text, user_id=user))
    assert answer.status == 200, answer.text
    if not answer.text.startswith("{"):  # Bolt answers a text-only ack as plain text
        return answer.text
    body = answer.json()
    return body.get("text", "") + "\n" + str(body.get("blocks", ""))


def a_day_of_work(engine: Engine, now: datetime) -> int:
    with transaction(engine) as s:
        risky = put_task(s, State.AWAITING_APPROVAL, now - timedelta(hours=3), risk="high")
        put_task(s, State.AWAITING_APPROVAL, now - timedelta(hours=2), risk="low")
        put_task(s, State.MERGED, now - timedelta(hours=5), prompt="bump the deps")
        put_task(s, State.FAILED, now - timedelta(hours=1), prompt="port", reason="checks failed")
        put_task(s, State.RUNNING, now - timedelta(minutes=5), requester=STRANGER)
    return risky


def test_agent_digest_answers_at_once_with_the_digest(
    slack: SlackEmulator, engine: Engine, url: str
) -> None:
    now = datetime.now(UTC)
    a_day_of_work(engine, now)
    # "So far" runs from the last scheduled digest, six hours ago, not from today's 08:00,
    # which may be minutes ago: the test must not depend on the hour it runs at.
    with transaction(engine) as s:
        assert digests.claim_run(s, "C900", now - timedelta(hours=6))
    shown = command(slack, url, "digest")
    assert "2 awaiting approval, 1 merged, 1 failed, 1 still open" in shown
    assert "risk *high*" in shown and blocks.APPROVE in shown and "checks failed" in shown
    mine = command(slack, url, "digest mine", user=STRANGER)
    assert "0 awaiting approval, 0 merged, 0 failed, 1 still open" in mine
    with transaction(engine) as s:
        assert s.exec(select(Outbox).where(Outbox.kind == "post")).all() == []  # only a reply


def test_the_scheduled_digest_reaches_the_channel_and_subscribers_and_its_buttons_work(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier, cfg: Config
) -> None:
    assert "by DM" in command(slack, url, "digest subscribe")
    fire = crontime.latest_fire(crontime.trigger("0 8 * * *", "UTC"), datetime.now(UTC))
    assert fire is not None
    risky = a_day_of_work(engine, fire)
    slack.fail("chat.postMessage", status=429, retry_after=1)  # the notifier retries it
    sent = digest.send_due(engine, cfg, fire + timedelta(seconds=30))
    assert sorted(one.target for one in sent) == ["C900", REQUESTER]
    posted = slack.wait_until(
        lambda: slack.messages("C900") and slack.messages(dm_id(REQUESTER)),
        timeout=10,
        what="digests",
    )
    assert posted
    (channel,) = slack.messages("C900")
    assert "2 awaiting approval" in channel.all_text and "bump the deps" in channel.all_text
    (dm,) = slack.messages(dm_id(REQUESTER))  # in the app's DM, opened by conversations.open
    assert dm.all_text.startswith("Your nightcrew digest") and "still open" in dm.all_text
    assert channel.action_ids[:2] == [blocks.APPROVE, blocks.REJECT]  # the card's own ids
    # Approve straight from the digest: the riskiest task's button, handled as on its card.
    refused = block_action(blocks.APPROVE, user=STRANGER, message=channel.to_api())
    slack.post_to_app(url, refused)
    slack.wait_until(slack.responses, what="the refusal")
    slack.post_to_app(url, block_action(blocks.APPROVE, user=REQUESTER, message=channel.to_api()))
    slack.wait_until(lambda: len(slack.responses()) == 2, what="the approval reply")
    with transaction(engine) as s:
        task = s.get(Task, risky)
        assert task is not None and task.state is State.MERGING
    assert "only the requester" in slack.responses()[0].all_text


def test_a_dm_digest_whose_answer_was_lost_is_found_not_sent_twice(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier, cfg: Config
) -> None:
    """Posted into the DM's channel (conversations.open), so a retry after a lost answer can
    find it there by its metadata, as for cards."""
    assert "by DM" in command(slack, url, "digest subscribe")
    fire = crontime.latest_fire(crontime.trigger("0 8 * * *", "UTC"), datetime.now(UTC))
    assert fire is not None
    a_day_of_work(engine, fire)
    slack.fail("chat.postMessage", drop=True, applied=True, times=2)  # both posted, answers lost
    digest.send_due(engine, cfg, fire + timedelta(seconds=30))
    slack.wait_until(
        lambda: len(slack.calls("conversations.history")) >= 2, timeout=15, what="the lookups"
    )
    slack.wait_until(
        lambda: slack.messages("C900") and slack.messages(dm_id(REQUESTER)), what="digests"
    )
    assert len(slack.messages(dm_id(REQUESTER))) == 1 and len(slack.messages("C900")) == 1
    digests = [
        c for c in slack.calls("chat.postMessage") if c.params["channel"] in ("C900", "D111")
    ]
    assert len(digests) == 2  # one each: the retries found them instead of posting again
    assert [c.params["users"] for c in slack.calls("conversations.open")] == [REQUESTER]


def test_schedules_from_slack(slack: SlackEmulator, engine: Engine, url: str) -> None:
    added = command(slack, url, 'schedule "0 9 * * 1" --repo api update the deps <!channel>')
    assert "added schedule 1:" in added and "`0 9 * * 1` (UTC) on api, next Mon" in added
    assert "&lt;!channel&gt;" in added and "<!channel>" not in added
    assert ":warning:" in command(slack, url, 'schedule "0 25 * * *" nope')
    assert "update the deps &lt;!channel&gt;" in command(slack, url, "schedule list")
    assert "only the creator" in command(slack, url, "schedule pause 1", user=STRANGER)
    assert "schedule 1 paused" in command(slack, url, "schedule pause 1")
    assert "paused" in command(slack, url, "schedule list")
    with transaction(engine) as s:
        (schedule,) = s.exec(select(Schedule)).all()
    assert (schedule.channel, schedule.creator, schedule.paused) == ("C111", REQUESTER, True)
    assert "deleted" in command(slack, url, "schedule delete 1")
    assert "no schedules yet" in command(slack, url, "schedule list")
    assert "schedule" in command(slack, url, "help")


def test_nightcrew_bot_runs_the_scheduler(tmp_path: Path, git_repo: Path) -> None:
    """The composition: `nightcrew bot` as a real process catches up at start, so a digest
    due this minute reaches its channel and a schedule created earlier queues its task."""
    (tmp_path / "nightcrew.yaml").write_text(
        f"repos:\n  api:\n    path: {git_repo}\nchannels:\n  C111: api\n"
        "digest: {cron: '* * * * *', timezone: UTC, channels: [C900]}\n"
    )
    home = tmp_path / "home"
    engine = make_engine(sqlite_url(home))
    # Daily at two minutes ago: missed once, caught up at start, next due tomorrow. Every
    # minute, a bot slow to stop would fire it again at its next look, 20 s on.
    due = datetime.now(UTC) - timedelta(minutes=2)
    with transaction(engine) as s:
        s.add(
            Schedule(
                cron=f"{due.minute} {due.hour} * * *",
                timezone="UTC",
                repo="api",
                prompt="tidy the changelog",
                creator=REQUESTER,
                channel="C111",
                created_at=datetime.now(UTC) - timedelta(minutes=5),
            )
        )
    with SlackEmulator() as slack:
        proc = start_bot(slack, home, tmp_path / "nightcrew.yaml")
        try:
            try:
                digest_post = slack.wait_until(lambda: slack.messages("C900"), timeout=30)
                card = slack.wait_until(lambda: slack.messages("C111"), timeout=10)
            except TimeoutError:
                proc.terminate()
                raise AssertionError(proc.communicate(timeout=10)[0]) from None
        finally:
            proc.terminate()
            try:
                proc.wait(90)  # a loaded 2-core box took over 30 s to join the threads once
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert "nightcrew digest" in digest_post[0].all_text
    assert "tidy the changelog" in card[0].all_text
    with transaction(engine) as s:
        (task,) = s.exec(select(Task)).all()
    assert (task.source, task.requester, task.channel) == ("schedule", REQUESTER, "C111")
    engine.dispose()
