"""`nightcrew add --after`, `nightcrew plan` (a real sandboxed planner run against the
scripted model) and how plans show in `ls` and `show`."""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cli_fixtures import Cli
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.test_planner import FOUR


def test_add_after_waits_and_bad_prerequisites_write_nothing(cli: Cli) -> None:
    cli.ok("add", "first")
    assert "task 2 on app waits for #1 to merge, then starts" in cli.ok(
        "add", "--after", "1", "second"
    )
    assert "waiting" in cli.ok("ls")
    assert "there is no task 9" in cli.fails("add", "--after", "1,9", "third")
    assert "not a task id" in cli.fails("add", "--after", "x", "third")


@pytest.fixture
def model(cli: Cli, monkeypatch: pytest.MonkeyPatch, sandbox_image: str):
    def use(*script: object) -> ScriptedLLM:
        llm = ScriptedLLM(script).start()  # type: ignore[arg-type]
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        monkeypatch.setenv("NIGHTCREW_MODEL", "scripted-model")
        started.append(llm)
        return llm

    started: list[ScriptedLLM] = []
    yield use
    for llm in started:
        llm.stop()


def test_plan_prints_the_plan_and_queue_queues_all_of_it_once(cli: Cli, model) -> None:
    model(reply(tool_call("submit_plan", FOUR)))
    printed = cli.ok("plan", "add subtraction to calc")
    assert "Plan 1: add subtraction" in printed
    assert "3. [M] after 1 test sub()" in printed and "paths: test_sub.py" in printed
    assert "nightcrew plan --queue 1" in printed
    assert cli("ls").stderr.startswith("no tasks")  # proposed, not queued (a pipe: stderr)
    assert "queued plan 1: tasks #1, #2, #3, #4" in cli.ok("plan", "--queue", "1")
    listing = cli.ok("ls")
    assert listing.count("(plan 1)") == 4 and listing.count("waiting") == 2
    shown = cli.ok("show", "p1")
    assert "Plan 1 (queued): add subtraction" in shown and "#3 waiting" in shown
    assert re.search(r"^page: http://\S+/p/1\?u=local%3A\S+&e=\d+&s=[0-9a-f]{64}$", shown, re.M)
    assert "plan 1 is queued, not proposed" in cli.fails("plan", "--queue", "1")


def test_the_planner_asks_the_model_as_the_executor_does(cli: Cli, model) -> None:
    """`stream: true` in nightcrew.yaml (a gateway that answers only so) holds for the
    planner too, not only for the agents."""
    (cli.repo / "nightcrew.yaml").write_text("repos:\n  app: {path: .}\nstream: true\n")
    llm = model(reply(tool_call("submit_plan", FOUR)))
    assert "Plan 1: add subtraction" in cli.ok("plan", "add subtraction to calc")
    assert [r.get("stream") for r in llm.requests] == [True]


def test_an_unusable_planner_answer_is_one_clear_error_and_no_task(cli: Cli, model) -> None:
    bad = {"title": "x", "tasks": [{"prompt": "a", "allowed_paths": ["a"], "after": [5]}]}
    model(*[reply(tool_call("submit_plan", bad))] * 3)
    err = cli.fails("plan", "--yes", "add subtraction")
    assert "the planner's answer was unusable: the plan: task 1 comes after task 5" in err
    assert cli("ls").stderr.startswith("no tasks")  # nothing queued


def test_a_plan_over_todays_budget_says_so_before_it_is_queued(cli: Cli, model) -> None:
    # Four tasks (S, S, M, M) of a repo whose tasks may cost $4 each: up to $6; $5 a day.
    (cli.repo / "nightcrew.yaml").write_text(
        "repos:\n  app: {path: ., limits: {max_cost_usd: 4}}\nbudgets: {daily_usd: 5}\n"
    )
    model(reply(tool_call("submit_plan", FOUR)))
    result = cli("plan", "--yes", "add subtraction")
    assert result.returncode == 0, result.stderr
    assert "may cost up to $6.00, more than the $5.00 left of today's budget" in result.stderr
    assert "queued plan 1" in result.stdout


PRICED = (
    "repos:\n  app: {path: .}\n"
    "prices: {scripted-model: {prompt: 2, completion: 10}}\n"  # USD per million tokens
)


def spent_today(cli: Cli) -> dict[str, object]:
    import json

    budgets = json.loads(cli.ok("budget", "--json"))["budgets"]
    return next(b for b in budgets if b["scope"] == "all")["spent"]


def test_the_planners_model_calls_are_charged_to_todays_spend(cli: Cli, model) -> None:
    """A plan costs model calls before any task runs: `nightcrew budget` counts them."""
    (cli.repo / "nightcrew.yaml").write_text(PRICED)
    # One read_file turn, then the plan: 2 calls of 1M prompt + 100k completion tokens.
    usage = (1_000_000, 100_000)
    model(
        reply(tool_call("read_file", {"path": "calc.py"}), usage=usage),
        reply(tool_call("submit_plan", FOUR), usage=usage),
    )
    assert "Plan 1: add subtraction" in cli.ok("plan", "add subtraction to calc")
    # 2 calls of ($2 + $1) = $6.00, before any task ran.
    assert spent_today(cli) == {"usd": 6.0, "nanos": 6_000_000_000, "unpriced_tokens": 0}
    # An answer the planner could not use costs what its calls cost too.
    bad = {"title": "x", "tasks": [{"prompt": "a", "allowed_paths": ["a"], "after": [5]}]}
    model(*[reply(tool_call("submit_plan", bad), usage=usage)] * 3)
    assert "unusable" in cli.fails("plan", "add subtraction")
    assert spent_today(cli) == {"usd": 15.0, "nanos": 15_000_000_000, "unpriced_tokens": 0}


@dataclass(frozen=True)
class CtrlCThen:
    """A person pressing Ctrl-C while the planner waits for this answer: a real SIGINT to
    the process running the command (here, the test's own), sent before the answer."""

    step: Any

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        self.step.serve(h, request)


def test_a_plan_stopped_mid_run_still_charges_the_calls_it_made(cli: Cli, model) -> None:
    """Ctrl-C during the planner's second model call ends the command; the first call was
    paid for, so it is on the ledger all the same (the planner's meter is charged however
    the run ends: a plan, an unusable answer, a bug, an interrupt)."""
    (cli.repo / "nightcrew.yaml").write_text(PRICED)
    usage = (1_000_000, 100_000)  # $3 a call
    read = reply(tool_call("read_file", {"path": "calc.py"}), usage=usage)
    llm = model(read, CtrlCThen(read))
    stopped = cli("plan", "add subtraction to calc")
    assert stopped.returncode == 130, stopped  # 128 + SIGINT, as shells report it
    assert len(llm.requests) == 2
    assert spent_today(cli) == {"usd": 3.0, "nanos": 3_000_000_000, "unpriced_tokens": 0}


def test_a_spent_budget_refuses_a_new_plan_before_the_planner_runs(cli: Cli, model) -> None:
    (cli.repo / "nightcrew.yaml").write_text(PRICED + "budgets: {daily_usd: 5}\n")
    usage = (1_000_000, 400_000)  # $6 of a $5 day
    model(reply(tool_call("submit_plan", FOUR), usage=usage))
    cli.ok("plan", "add subtraction to calc")
    llm = model(reply(tool_call("submit_plan", FOUR)))
    err = cli.fails("plan", "add multiplication")
    assert "no new plan: daily budget reached for all repos: $6.00 of $5.00 spent today" in err
    assert "raise the budget in nightcrew.yaml" in err
    assert llm.requests == []  # the planner never ran
    assert "no plan 2" in cli.fails("show", "p2") or "not" in cli.fails("show", "p2")
