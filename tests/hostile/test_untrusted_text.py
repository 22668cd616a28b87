"""Untrusted text stays text. What a model, an agent or a person writes (summaries, questions,
file names, check output, review findings, risk reasons, prompts, nudges) reaches the database
without NUL or control characters (PostgreSQL refuses NUL in text), reaches Slack unable to
ping anyone or make a link, and reaches the terminal unable to move the cursor, clear the
screen or be read as rich markup."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from slack_bolt import App
from sqlalchemy import Engine, text
from sqlmodel import SQLModel, select

from bot import actions
from bot.slack.app import SlackEnv, build_app
from bot.slack.notifier import Notifier
from bot.slack.run import http_mode
from executor.config.schema import Config, RepoConfig
from storage import outbox
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Nudge, Schedule, utcnow
from storage.tasks import add_nudge, create_task, get_task, record, transition
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator, app_mention, slash_command, thread_reply
from tests.slack_fixtures import card_of, to_awaiting_approval
from tests.test_cli import Cli, _fresh_composition
from tests.worker_fixtures import RunWorker, add_task, task

# What an adversary writes: every way mrkdwn pings or links, rich markup, terminal escapes.
PINGS = (
    "<!channel> <!here> <!everyone> <@U0EVIL> <#C0EVIL> <!subteam^S0EVIL> "
    "<http://evil.example|click here> <mailto:x@evil.example|mail>"
)
MARKUP = "[/x] [bold red]loud[/bold red] [link=http://evil.example]x[/link]"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x00\x08\r\x9b1m"
HOSTILE = f"{PINGS} {MARKUP} {ESCAPES} ok\nsecond line\tcolumn"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but \t and \n
# A ping or a link in what the app sent to Slack; `<@U111>` (the requester, a user id Slack
# vouched for: U111 in Slack, U1 for the worker) is the app's own mention, allowed.
PING = re.compile(r"<(?!@U1(11)?>)[!@#]|<(https?|mailto):")


def dirty(row: str) -> bool:
    """A control character in a row as `stored_texts` gives it: raw, or escaped by JSON."""
    return bool(CONTROL.search(row) or re.search(r"(?<!\\)\\u00[01]", row))


def sent_to_slack(slack: SlackEmulator, *more: Any) -> str:
    """Everything the app sent to Slack: Web API calls, response_url posts, acks in `more`."""
    found = [c.params for c in slack.calls()]
    found += [r.body for r in slack.responses()]
    return json.dumps([*found, *more], ensure_ascii=False)


def assert_no_pings(sent: str) -> None:
    hits = sorted({sent[m.start() : m.start() + 30] for m in PING.finditer(sent)})
    assert not hits, f"pings or links reached Slack: {hits}"


def stored_texts(engine: Engine) -> list[str]:
    """Every text in every row of every table, JSON payloads included."""
    with engine.connect() as conn:
        rows = [
            row
            for table in SQLModel.metadata.sorted_tables
            for row in conn.execute(table.select()).all()
        ]
    return [json.dumps(list(row), default=str, ensure_ascii=False) for row in rows]


def test_every_writer_stores_clean_text_on_both_databases(engine: Engine) -> None:
    """A writer that forgot to clean (storage's own functions, called directly) cannot store
    NUL or terminal escapes: PostgreSQL would refuse the row, SQLite would keep them."""
    with transaction(engine) as s:
        created = create_task(s, repo="api", prompt=HOSTILE, requester="U1", channel="C1")
        assert created.id is not None
        tid = created.id
    with transaction(engine) as s:
        transition(s, tid, State.PREPARING, actor="w\x1b1", reason=HOSTILE)
        transition(s, tid, State.RUNNING, actor="w1")
        transition(s, tid, State.AWAITING_APPROVAL, reason=HOSTILE, summary=HOSTILE)
        add_nudge(s, tid, text=HOSTILE, author="U1\x00")
        record(s, tid, "proof", {"files": [HOSTILE], "risk": {"reasons": [HOSTILE]}})
        outbox.queue_reaction(s, tid, "1.2", "eyes\x00")
        s.add(Schedule(cron="@daily", timezone="UTC", repo="api", prompt=HOSTILE, creator="U1"))
    assert not [t for t in stored_texts(engine) if dirty(t)]
    with transaction(engine) as s:
        stored = get_task(s, tid)
        (nudge,) = s.exec(select(Nudge)).all()
    for value in (stored.prompt, stored.summary, stored.reason, nudge.text):
        assert value is not None
        assert PINGS in value and MARKUP in value and "second line\tcolumn" in value
        assert not CONTROL.search(value)


def test_a_hostile_agents_summary_and_file_names_are_stored_clean_and_shown_inert(
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    docker_client: docker.DockerClient,
    slack: SlackEmulator,
    notifier: Notifier,
) -> None:
    """The agent names a file so that the risk reasons quote it, prints escapes, and finishes
    with a summary full of NUL, pings and markup. On PostgreSQL the NUL alone used to fail the
    task; in Slack the file name used to ping the channel."""
    task_id = add_task(engine, prompt="tidy up")
    # The card first: a drain would skip the task while the notifier holds its row (SKIP LOCKED).
    card_of(slack, engine, task_id)
    script = [
        reply(tool_call("write_file", {"path": "secret-<!channel>.txt", "content": "x\n"})),
        reply(tool_call("bash", {"command": "printf 'out\\033[2J\\000 <!here>\\n'"})),
        reply(tool_call("finish", {"summary": HOSTILE})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    assert done.summary is not None and done.summary.startswith(f"{PINGS} {MARKUP}")
    assert not [t for t in stored_texts(engine) if dirty(t)]
    ready = slack.wait_until(
        lambda: [m for m in slack.messages("C1") if "ready for review" in m.all_text],
        timeout=15,
        what="the proof pack",
    )[0]
    assert "secret-&lt;!channel&gt;.txt" in str(ready.blocks)  # the file, named as it is
    slack.wait_until(  # the card, edited to show the summary as written
        lambda: "&lt;!channel&gt;" in card_of(slack, engine, task_id).all_text,
        what="the card with the summary",
    )
    assert_no_pings(sent_to_slack(slack))


@pytest.fixture
def url(engine: Engine, env: SlackEnv, tmp_path: Path) -> Iterator[str]:
    config = Config(repos={"api": RepoConfig(path=tmp_path)}, channels={"C111": "api"})
    app: App = build_app(engine, lambda: config, env)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        yield url


def test_peoples_and_agents_text_never_pings_or_links_anywhere_in_slack(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    """Through every path that shows text: the card, milestones and the proof pack, lists,
    show, the digest, the App Home, schedules, thread hints and the refusals that quote
    what was typed."""
    acks = []

    def command(text: str, user: str = "U111") -> None:
        answer = slack.post_to_app(url, slash_command(text, user_id=user))
        assert answer.status == 200
        acks.append(answer.text)

    command(f"add {HOSTILE}")
    card = card_of(slack, engine)
    finding = {"file": HOSTILE, "line": 1, "message": HOSTILE}
    review = {"verdict": "approve", "summary": HOSTILE, "findings": [finding]}
    to_awaiting_approval(
        engine,
        summary=HOSTILE,
        files=[HOSTILE],
        diff_stat=HOSTILE,
        checks=[{"command": HOSTILE, "passed": False, "output": HOSTILE}],
        review=review,
        risk={"level": f"high {PINGS}", "reasons": [f"touches {PINGS}"]},
    )
    slack.wait_until(
        lambda: [m for m in slack.messages("C111") if "ready for review" in m.all_text],
        what="the proof pack",
    )
    slack.post_to_app(url, thread_reply("C111", card.ts, "U111", HOSTILE))  # a nudge
    slack.post_to_app(url, thread_reply("C111", card.ts, "U222", HOSTILE))  # refused: a hint
    slack.wait_until(lambda: slack.ephemerals("U222"), what="the hint")
    for typed in ("list all", "show 1", "digest", "digest mine", f"{PINGS}", "cancel <!here>"):
        command(typed)
    command(f'schedule "@daily" {HOSTILE}')
    command("schedule list")
    with transaction(engine) as s:  # a task failed by the agent's own words
        failed = actions.add(s, repo="api", prompt="p", requester="U111", channel="C111").task
        assert failed.id is not None
        transition(s, failed.id, State.PREPARING, actor="w1")
        transition(s, failed.id, State.FAILED, reason=HOSTILE, actor="w1")
    mention = app_mention(f"show {failed.id}", user="U111")
    slack.post_to_app(url, mention)
    opened = app_mention("hi", user="U111")
    opened["event"] = {"type": "app_home_opened", "user": "U111", "tab": "home"}
    slack.post_to_app(url, opened)
    slack.wait_until(lambda: slack.home("U111"), what="the home tab")
    slack.wait_until(
        lambda: any("failed" in m.all_text for m in slack.messages("C111") if m.is_reply),
        what="the failure milestone",
    )
    slack.wait_until(lambda: len(slack.ephemerals("U111")) >= 1, what="the mention's answer")
    sent = sent_to_slack(slack, acks)
    assert_no_pings(sent)
    assert "&lt;!channel&gt;" in sent and "[/x]" in sent  # shown, as written


@pytest.fixture
def cli(git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    yield Cli(git_repo, tmp_path / "home", monkeypatch)
    _fresh_composition()


def test_the_terminal_shows_hostile_text_as_written_and_never_its_escapes(cli: Cli) -> None:
    """`nightcrew show`, `ls`, `log` and `digest` on a task whose every text is hostile, one
    written by an older release (escapes and all, stored before cleaning existed) among them."""
    cli.ok("add", "first task")
    engine = make_engine(sqlite_url(cli.home))
    with transaction(engine) as s:
        task_id = actions.add(s, repo="app", prompt=MARKUP, requester="U1").task.id
        assert task_id is not None
        transition(s, task_id, State.PREPARING, actor="w1")
        transition(s, task_id, State.RUNNING, actor="w1")
        proof = {"files": [MARKUP], "risk": {"level": "low", "reasons": [MARKUP]}}
        record(s, task_id, "proof", proof | {"review": {"verdict": "approve", "summary": MARKUP}})
        record(s, task_id, "agent_output", {"text": MARKUP})
        transition(s, task_id, State.AWAITING_APPROVAL, reason=MARKUP, summary=MARKUP)
        actions.nudge(s, task_id, MARKUP, actor="U1")
    with engine.begin() as conn:  # an older release's row: no cleaning on the way in
        conn.execute(text("UPDATE task SET summary = :s, error = :s WHERE id = 1"), {"s": HOSTILE})
        conn.execute(
            text("INSERT INTO taskevent (task_id, kind, payload, created_at) "
                 "VALUES (1, 'agent_output', :p, :at)"),
            {"p": json.dumps({"text": HOSTILE}), "at": utcnow().replace(tzinfo=None)},
        )  # fmt: skip
    engine.dispose()
    outputs = [
        cli.ok("show", str(task_id)),
        cli.ok("show", "1"),
        cli.ok("ls", "--all"),
        cli.ok("log", str(task_id)),
        cli.ok("log", "1"),
        cli.ok("digest"),
    ]
    for output in outputs:
        assert not CONTROL.search(output), repr(output)
    assert "[/x] [bold red]loud[/bold red]" in outputs[0]  # markup shown as written
    assert "[/x]" in outputs[3] and "<!channel>" in outputs[4]
