"""One review queue everywhere: `/agent review`, the App Home's waiting section, `nightcrew
review` and the /review page list the same tasks in the same order, riskiest first; and
`/agent review` shows a person only what they may approve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_bolt import App
from sqlalchemy import Engine

from bot.links import Signer
from bot.slack import blocks
from bot.slack.app import SlackEnv, build_app
from bot.slack.handle import may_decide
from bot.slack.run import http_mode
from bot.web.app import serve_web
from executor.config.schema import Config, RepoConfig
from tests.slack_emulator import SlackEmulator, app_mention, slash_command
from tests.web_fixtures import Web, parked

APPROVER, REQUESTER, STRANGER = "U999", "U111", "U222"
ROOT = Path(__file__).parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        repos={
            "api": RepoConfig(path=tmp_path, approvers=[APPROVER]),
            "web": RepoConfig(path=tmp_path, approvers=[]),
        },
        channels={"C111": "api"},
    )


@pytest.fixture
def web(engine: Engine, config: Config) -> Iterator[Web]:
    """The pages as `nightcrew bot` serves them: the review page by Slack's approval rule."""
    signer = Signer(b"review-secret-" * 4)
    rule = lambda user: may_decide(config, user)  # noqa: E731
    with serve_web(engine, signer, port=0, may_decide=rule) as base:
        yield Web(base, Signer(signer.secret, base, signer.ttl_s))


@pytest.fixture
def url(engine: Engine, env: SlackEnv, config: Config, web: Web) -> Iterator[str]:
    app: App = build_app(engine, lambda: config, env, signer=web.signer)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        yield url


def queue(engine: Engine) -> dict[str, int]:
    """Five tasks awaiting approval, of every kind of risk, parked in an order unlike the
    ranking's; one in a repo where APPROVER is nobody."""
    ids = {
        "small": parked(engine, prompt="fix a typo", insertions=1, deletions=1),
        "failing": parked(
            engine,
            prompt="speed up the cache",
            checks=[{"command": "pytest", "passed": False, "exit_code": 1}],
            risk={"level": "high", "reasons": ["checks failing"]},
        ),
        "migration": parked(
            engine,
            prompt="add a column",
            files=["storage/migrations/versions/0012_col.py"],
            insertions=300,
            deletions=112,
            risk={"level": "high", "reasons": []},
            review={"verdict": "approve", "summary": "", "findings": [{"message": "x"}] * 2},
            rounds=2,
        ),
        "medium": parked(
            engine, prompt="refactor", insertions=150, risk={"level": "medium", "reasons": []}
        ),
        "other_repo": parked(engine, prompt="not yours", repo="web", requester=REQUESTER),
    }
    return ids


def ids_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^\*(\d+)\* ", text, flags=re.M)]


def agent_review(slack: SlackEmulator, url: str, user: str) -> tuple[list[int], list[Any]]:
    answer = slack.post_to_app(url, slash_command("review", user_id=user))
    assert answer.status == 200
    body = answer.json()
    sections = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section"]
    return ids_in("\n".join(sections)), body["blocks"]


def home_order(slack: SlackEmulator, url: str, user: str) -> list[int]:
    event = app_mention("x", user=user)
    event["event"] = {"type": "app_home_opened", "user": user, "tab": "home", "channel": "D1"}
    assert slack.post_to_app(url, event).status == 200
    home = slack.wait_until(lambda: slack.home(user), what="the App Home")
    texts = [b["text"]["text"] for b in home["blocks"] if b["type"] == "section"]
    start = texts.index("*Waiting for your approval*")
    waiting = []
    for text in texts[start + 1 :]:
        if text.startswith("*") and not re.match(r"^\*\d+\* ", text):
            break  # the next heading
        waiting += ids_in(text)
    return waiting


def cli_order(engine: Engine, home: Path, *options: str) -> list[int]:
    env = {
        **os.environ,
        "NIGHTCREW_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "NIGHTCREW_HOME": str(home),
        "COLUMNS": "220",
    }
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "review", *options],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    if "--json" in options:
        entries = json.loads(out)
        assert all(e["risk_reasons"] and "risk_score" in e for e in entries[:1])
        return [e["id"] for e in entries]
    return [int(m[1]) for m in re.finditer(r"^\s*\d+\s+(\d+)\s+(?:high|medium|low)", out, re.M)]


def test_every_surface_lists_the_same_tasks_in_the_same_order(
    slack: SlackEmulator, engine: Engine, url: str, web: Web, tmp_path: Path
) -> None:
    ids = queue(engine)
    mine = [ids[k] for k in ("migration", "failing", "medium", "small")]  # riskiest first
    in_slack, shown = agent_review(slack, url, APPROVER)
    assert in_slack == mine  # and not the task of a repo they do not approve
    assert home_order(slack, url, APPROVER) == mine
    page = httpx.get(web.review(APPROVER)).text
    assert [int(n) for n in re.findall(r'data-task="(\d+)"', page)] == mine
    # The terminal is the host's user: every task waiting, in the same order.
    everything = cli_order(engine, tmp_path)
    assert [n for n in everything if n in mine] == mine and len(everything) == 5
    assert cli_order(engine, tmp_path, "--json") == everything  # scripts get the same order
    # Each entry says why and carries Approve, Open and Request changes.
    text = str(shown)
    assert "touches storage/migrations/" in text and "412 lines changed" in text
    actions = [b for b in shown if b["type"] == "actions"]
    assert len(actions) == 4
    for row in actions:
        kinds = [e["action_id"] for e in row["elements"]]
        assert kinds == [blocks.APPROVE, blocks.OPEN, blocks.CHANGES]
        link = next(e["url"] for e in row["elements"] if e.get("url"))
        assert httpx.get(link).status_code == 200


def test_a_stranger_sees_only_their_own_tasks_in_the_queue(
    slack: SlackEmulator, engine: Engine, url: str, web: Web
) -> None:
    ids = queue(engine)
    assert agent_review(slack, url, STRANGER)[0] == []
    # The requester of every task may approve their own, in both repos.
    mine, _ = agent_review(slack, url, REQUESTER)
    assert sorted(mine) == sorted(ids.values())
    # A review link made for the stranger lists nothing, whoever's tasks wait.
    page = httpx.get(web.review(STRANGER)).text
    assert "data-task" not in page and "Nothing waits for you" in page
