"""`nightcrew up` as a real process, in a temp git repo with a nightcrew.yaml, against the
scripted model and the real Docker engine: without Slack (a CLI-queued task runs and parks
for approval, a schedule fires, an edit of nightcrew.yaml takes effect in the running
executor) and with Slack (Socket Mode against the emulator: `/agent add` becomes a card)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlmodel import select

from bot.slack import blocks
from executor.costs.budget import WAITING
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Schedule, Task
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator, slash_command
from tests.waiting import wait_for

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
MODEL = "gpt-4.1"  # priced: $2 / $8 per million tokens
TURN = (50_000, 25_000)  # $0.30


def finish(summary: str) -> object:
    return reply(tool_call("finish", {"summary": summary}), usage=TURN)


class Up:
    """`nightcrew up` in `repo`, its output in a file (a pipe nobody reads could fill up)."""

    def __init__(self, repo: Path, home: Path, config: Path, env: dict[str, str]) -> None:
        self.repo, self.home, self.config = repo, home, config
        self.log = home.parent / "up.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "NIGHTCREW_"))},
            "NIGHTCREW_HOME": str(home),
            "NIGHTCREW_CONFIG": str(config),
            "NIGHTCREW_MODEL": MODEL,
            "NIGHTCREW_WEB_PORT": "0",  # tests run side by side
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [NIGHTCREW, "up"], cwd=self.repo, env=self.env, stdout=out, stderr=out
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *args: str) -> str:
        """Another `nightcrew` command beside the running one, as a person would type it."""
        done = subprocess.run(
            [NIGHTCREW, *args], cwd=self.repo, env=self.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def wait(self, what: str, predicate: Callable[[], object], timeout: float = 60) -> object:
        def alive_and(predicate: Callable[[], object]) -> object:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            return predicate()

        return wait_for(lambda: alive_and(predicate), timeout, lambda: f"{what}\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"`nightcrew up` ignored SIGTERM\n{self.output()}") from None


def write_config(path: Path, repo: Path, **extra: object) -> None:
    config = {
        "repos": {"app": {"path": str(repo), "review": {"enabled": False}}},
        "channels": {"C111": "app"},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def up(project: Path, tmp_path: Path, sandbox_image: str) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def make(**env: str) -> Up:
        runner = Up(project, tmp_path / "home", tmp_path / "nightcrew.yaml", env)
        started.append(runner)
        return runner

    yield make
    for runner in started:
        if runner.proc is not None and runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait(10)


def tasks(home: Path) -> list[Task]:
    engine = make_engine(sqlite_url(home))
    try:
        with transaction(engine) as s:
            return list(s.exec(select(Task).order_by(Task.id)).all())
    finally:
        engine.dispose()


def test_up_without_slack_runs_cli_tasks_fires_schedules_and_rereads_its_config(
    up: Callable[..., Up], project: Path
) -> None:
    runner = up()
    write_config(runner.config, project, budgets={"daily_usd": 0.1})
    engine = make_engine(sqlite_url(runner.home))
    now = datetime.now(UTC)
    due = now - timedelta(minutes=2)  # daily at this time: missed once, next due tomorrow
    with transaction(engine) as s:
        schedule = Schedule(
            cron=f"{due.minute} {due.hour} * * *", timezone="UTC", repo="app",
            prompt="tidy the changelog", creator="local:someone",
            created_at=now - timedelta(minutes=5),
        )  # fmt: skip
        s.add(schedule)
    engine.dispose()

    with ScriptedLLM([finish("tidied"), finish("fixed add()")]) as llm:
        runner.env["OPENAI_BASE_URL"] = llm.base_url
        runner.start()
        # The schedule fires at start (the catch-up) and its task runs: $0.30 of $0.10.
        runner.wait(
            "the scheduled task to park for approval",
            lambda: [t for t in tasks(runner.home) if t.state is State.AWAITING_APPROVAL],
        )
        assert "Slack is not connected" in runner.output()
        (scheduled,) = tasks(runner.home)
        assert (scheduled.source, scheduled.prompt) == ("schedule", "tidy the changelog")

        # A task queued from the terminal waits: today's budget is spent.
        assert "queued task 2 on app" in runner.cli("add", "fix add() in calc.py")
        runner.wait(
            "task 2 to wait for the budget",
            lambda: (tasks(runner.home)[1].reason or "").startswith(WAITING),
        )
        assert tasks(runner.home)[1].state is State.QUEUED and len(llm.requests) == 1

        # Raising the budget in nightcrew.yaml frees it, without a restart.
        write_config(runner.config, project, budgets={"daily_usd": 5})
        runner.wait(
            "task 2 to run after the edit",
            lambda: tasks(runner.home)[1].state is State.AWAITING_APPROVAL,
        )
        runner.stop()
    assert runner.proc is not None and runner.proc.returncode == 0, runner.output()
    cli_task = tasks(runner.home)[1]
    assert (cli_task.source, cli_task.summary.split("\n")[0]) == ("cli", "fixed add()")


def test_up_with_slack_turns_an_agent_add_into_a_card_that_ends_ready_for_review(
    up: Callable[..., Up], project: Path
) -> None:
    with SlackEmulator() as slack, ScriptedLLM([finish("fixed add()")]) as llm:
        runner = up(OPENAI_BASE_URL=llm.base_url, **slack.env())
        write_config(runner.config, project)
        runner.start()
        runner.wait("Socket Mode", lambda: slack.connections(), timeout=60)
        envelope = slack.send_envelope(
            "slash_commands", slash_command("add fix add() in calc.py"), timeout=10
        )
        assert envelope.ack is not None
        assert "queued task 1 on app" in envelope.ack.payload["text"]
        card = runner.wait("the card", lambda: slack.messages("C111"))[0]  # type: ignore[index]
        assert "fix add() in calc.py" in card.all_text

        def ready() -> bool:
            now = slack.message("C111", card.ts)
            return blocks.APPROVE in now.action_ids and "awaiting approval" in now.all_text

        def replies() -> list[str]:
            return [m.text for m in slack.thread("C111", card.ts) if m.is_reply]

        runner.wait("the card to offer Approve", ready)
        # The card's edit and the thread's reply are separate deliveries; either may land first.
        runner.wait("the review reply", lambda: any("is ready for review" in r for r in replies()))
        assert ":gear: Task 1 started working" in replies()
        runner.stop()
    (task,) = tasks(runner.home)
    assert (task.source, task.thread_ts, task.state) == ("slack", card.ts, State.AWAITING_APPROVAL)
