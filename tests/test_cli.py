"""The `nightcrew` command in a real git repo: in-process through typer's runner (same code,
same database, fast), and as a real process for the fresh-clone flow."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import update

from bot.links import Signer, ensure_secret
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Task, utcnow
from storage.queue import claim_next, reap_stale
from storage.tasks import record, transition
from tests.cli_fixtures import Cli, Result, fresh_composition
from tests.web_fixtures import CHECK, parked

# Their old home: other test files import them from here.
__all__ = ["Cli", "Result", "_fresh_composition"]
_fresh_composition = fresh_composition
NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))


def run_process(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIGHTCREW_HOME": str(home)}
    for name in ("NIGHTCREW_CONFIG", "NIGHTCREW_DATABASE_URL"):
        env.pop(name, None)
    return subprocess.run(
        [NIGHTCREW, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_fresh_repo_works_with_no_configuration(git_repo: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    added = run_process(git_repo, home, "add", "fix the readme")
    assert added.returncode == 0, added.stderr
    listed = run_process(git_repo, home, "ls")
    assert listed.returncode == 0, listed.stderr
    assert "fix the readme" in listed.stdout and "queued" in listed.stdout
    missing = run_process(git_repo, home, "cancel", "42")
    assert (missing.returncode, missing.stderr.strip()) == (1, "error: no task 42")


def test_add_then_ls_in_a_plain_git_repo(cli: Cli) -> None:
    assert cli.ok("add", "fix the readme").strip() == (
        "queued task 1 on app (branch nightcrew/1-fix-the-readme)"
    )
    assert cli.ok("add", "-q", "--priority", "high", "second").strip() == "2"
    listing = cli.ok("ls")
    assert "fix the readme" in listing and "second" in listing and "queued" in listing
    assert (cli.home / "nightcrew.db").exists()


def test_show_and_log_tell_the_story(cli: Cli) -> None:
    cli.ok("add", "fix the readme")
    cli.ok("nudge", "1", "mind the changelog")
    cli.ok("cancel", "1")
    shown = cli.ok("show", "1")
    for expected in ("cancelled", "nightcrew/1-fix-the-readme", "mind the changelog", "pending"):
        assert expected in shown
    (link,) = [line.removeprefix("page: ") for line in shown.splitlines() if "/t/1?" in line]
    path, _, query = link.partition("?")
    grant = Signer(ensure_secret(cli.home)).verify("task:1", dict(parse_qsl(query)))
    assert path.endswith("/t/1") and grant is not None and grant.user.startswith("local:")
    log = cli.ok("log", "1")
    assert "created by local:" in log
    assert "nudge from local:" in log and "mind the changelog" in log
    assert "queued → cancelled" in log
    follow = cli("log", "--follow", "1")  # a closed task: prints and returns at once
    assert follow.returncode == 0 and "queued → cancelled" in follow.stdout


def test_show_names_the_executors_that_ran_the_task_even_after_a_takeover(cli: Cli) -> None:
    cli.ok("add", "fix the readme")
    engine = make_engine(sqlite_url(cli.home))
    with transaction(engine) as s:
        claim_next(s, "exec-a/0")
        s.execute(update(Task).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    with transaction(engine) as s:
        reap_stale(s, timeout_s=30)
    with transaction(engine) as s:
        claim_next(s, "exec-b/1")
        transition(s, 1, State.RUNNING)
        transition(s, 1, State.FAILED, reason="broke", where=[Task.worker_id == "exec-b/1"])
    engine.dispose()
    shown = cli.ok("show", "1")
    assert "exec-a/0 (attempt 1); taken back: worker exec-a/0 stopped heartbeating" in shown
    assert "exec-b/1 (attempt 2)" in shown  # still there after the worker let go


def test_ls_filters(cli: Cli) -> None:
    cli.ok("add", "one")
    cli.ok("add", "two")
    cli.ok("cancel", "2")
    assert "two" not in cli.ok("ls")
    assert "two" in cli.ok("ls", "--all")
    assert "one" not in cli.ok("ls", "--state", "cancelled")
    none = cli("ls", "--state", "merged")  # in a pipe: the header, no rows, the note on stderr
    assert (none.returncode, none.stderr.strip()) == (0, "no tasks")
    assert none.stdout.count("\n") == 1 and none.stdout.startswith("ID\t")
    assert cli("ls", "--state", "merged", "--no-header").stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["show", "99"],
        ["log", "99"],
        ["cancel", "99"],
        ["retry", "99"],
        ["approve", "99"],
        ["reject", "99"],
        ["nudge", "99", "hello"],
    ],
)
def test_unknown_ids_exit_nonzero_and_write_nothing(cli: Cli, args: list[str]) -> None:
    cli.ok("add", "something")
    assert "error: no task 99" in cli.fails(*args)


@pytest.mark.parametrize("bad_id", ["abc", "1.5", "#x"])
def test_malformed_ids_are_refused(cli: Cli, bad_id: str) -> None:
    cli.ok("add", "something")
    assert "is not a task id" in cli.fails("cancel", bad_id)


def test_wrong_states_exit_nonzero_and_write_nothing(cli: Cli) -> None:
    cli.ok("add", "something")
    assert "task 1 is queued; only tasks awaiting approval can be approved" in cli.fails(
        "approve", "1"
    )
    assert "task 1 is queued; only failed, cancelled" in cli.fails("retry", "1")
    cli.ok("cancel", "1")
    assert "task 1 is cancelled; nothing to cancel" in cli.fails("cancel", "1")
    assert "task 1 is cancelled; nudges only reach open tasks" in cli.fails("nudge", "1", "hi")
    assert "re-queued task 1" in cli.ok("retry", "1")


def test_bad_input_to_add_is_refused(cli: Cli) -> None:
    cli.ok("ls")  # creates the database so the snapshots compare
    assert "the prompt is empty" in cli.fails("add", "   ")
    assert "priority 'urgent' is not one of high, normal, low" in cli.fails(
        "add",
        "x",
        "--priority",
        "urgent",
        code=2,  # a usage error
    )
    assert "unknown repo 'nope'; known repos: app" in cli.fails("add", "x", "--repo", "nope")
    assert "unknown state 'bogus'" in cli.fails("ls", "--state", "bogus", code=2)
    assert "the nudge is empty" in cli.fails("nudge", "1", " ")


def test_outside_a_git_repo_without_config_says_what_to_do(cli: Cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("add", "fix it", cwd=elsewhere)
    assert result.returncode == 2
    assert "not inside a git repository; run `nightcrew init`" in result.stderr


def test_a_subfolder_of_the_project_uses_the_project_s_database_and_config(cli: Cli) -> None:
    cli.ok("init")
    config = cli.repo / "nightcrew.yaml"
    config.write_text(config.read_text().replace("checks: []", 'checks: ["make test"]'))
    assert "queued task 1 on app" in cli("add", "first", found=True).stdout
    sub = cli.repo / "src" / "deep"
    sub.mkdir(parents=True)
    listed = cli("ls", found=True, cwd=sub)
    assert listed.returncode == 0 and "first" in listed.stdout  # not a new empty database
    assert "queued task 2 on app" in cli("add", "second", found=True, cwd=sub).stdout
    assert "make test" in cli("repos", found=True, cwd=sub).stdout  # the project's checks
    assert not (sub / ".nightcrew").exists() and not (cli.repo / "src" / ".nightcrew").exists()
    assert (cli.repo / ".nightcrew" / "nightcrew.db").is_file()
    (cli.repo / ".gitignore").unlink()  # as if `up` ran without `init`: still no new files
    status = subprocess.run(["git", "status", "--porcelain"], cwd=cli.repo, capture_output=True)
    assert ".nightcrew" not in status.stdout.decode(), status.stdout


def test_outside_any_project_commands_say_so_and_create_nothing(cli: Cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (["ls"], ["show", "1"], ["review"]):
        result = cli(*command, found=True, cwd=elsewhere)
        assert result.returncode == 1, command
        assert "not in a nightcrew project" in result.stderr, command
    assert list(elsewhere.iterdir()) == []


def test_init_writes_a_config_that_works(cli: Cli) -> None:
    out = cli.ok("init")
    assert "wrote nightcrew.yaml" in out and "wrote .env.example" in out
    assert ".nightcrew/" in (cli.repo / ".gitignore").read_text()
    assert "already exist; --force writes new ones" in cli("init").stderr
    assert cli("init").returncode == 1
    mine = (cli.repo / "nightcrew.yaml").read_text() + "# my own checks\n"
    (cli.repo / "nightcrew.yaml").write_text(mine)
    out = cli.ok("init", "--force")
    assert "kept the old nightcrew.yaml as nightcrew.yaml.bak" in out
    assert (cli.repo / "nightcrew.yaml.bak").read_text() == mine  # nothing of theirs lost
    assert "kept the old nightcrew.yaml as nightcrew.yaml.bak.1" in cli.ok("init", "--force")
    assert (cli.repo / "nightcrew.yaml.bak").read_text() == mine
    repos = cli.ok("repos")
    assert "app" in repos and "main" in repos and "no nightcrew.yaml" not in repos
    assert "queued task 1 on app" in cli.ok("add", "works with the written config")


def test_up_without_a_model_says_how_to_set_one(cli: Cli, monkeypatch) -> None:
    monkeypatch.delenv("NIGHTCREW_MODEL", raising=False)
    cli.ok("add", "something")
    result = cli("up")
    assert result.returncode == 2
    assert "tasks: 1 queued, 1 in all" in result.stdout
    assert "no model: set NIGHTCREW_MODEL" in result.stderr
    assert "pages:" not in result.stdout  # said before any server opened


def test_help_lists_every_command(cli: Cli) -> None:
    text = cli.ok("--help")
    for command in (
        "up",
        "init",
        "add",
        "ls",
        "show",
        "log",
        "nudge",
        "cancel",
        "retry",
        "approve",
        "reject",
        "repos",
        "budget",
    ):
        assert command in text


def test_budget_ls_and_show_tell_spend_waiting_and_unknown_costs(cli: Cli) -> None:
    from executor.costs.budget import WAITING
    from storage.queue import show_waiting
    from storage.spend import charge

    (cli.repo / "nightcrew.yaml").write_text(
        "repos:\n  app: {path: .}\nbudgets: {daily_usd: 1, repo_daily_usd: {app: 0.5}}\n"
    )
    assert "$0.00" in cli.ok("budget")
    cli.ok("add", "spent a lot")
    cli.ok("add", "waits")
    engine = make_engine(sqlite_url(cli.home))
    with transaction(engine) as s:
        now = datetime.now(UTC)
        charge(s, 1, model="m", tokens_in=9, tokens_out=1, cost_nanos=600_000_000, at=now)
        charge(s, 1, model="x", tokens_in=1_000, tokens_out=234, cost_nanos=None, at=now)
        show_waiting(s, {"app": f"{WAITING}the daily budget for repo app is spent"}, marker=WAITING)
    engine.dispose()

    lines = [line.strip() for line in cli.ok("budget").splitlines()]
    overall = next(line for line in lines if line.startswith("all repos"))
    assert overall.split()[2:4] == ["$0.60", "+"] and "1,234 tokens at unknown cost" in overall
    assert "$1.00" in overall and "$0.40" in overall  # the limit and what is left
    app = next(line for line in lines if line.startswith("repo app"))
    assert "$0.50" in app and "reached" in app and app.rstrip().endswith("2")
    listing = cli.ok("ls")
    assert "queued (budget)" in listing and "$0.60+?" in listing
    shown = cli.ok("show", "2")
    assert "waiting for budget: the daily budget for repo app is spent" in shown
    assert "$0.6000 + cost unknown for 1,234 tokens" in cli.ok("show", "1")


def test_budget_without_budgets_says_how_to_set_them(cli: Cli) -> None:
    assert "no budgets set; add `budgets: {daily_usd: 20}`" in cli("budget").stderr


def test_log_says_the_pipeline_s_steps_in_words_not_json(cli: Cli) -> None:
    cli.ok("ls")  # the database, made as any command makes it
    failed = {**CHECK, "command": "ruff check .", "exit_code": 1, "passed": False}
    engine = make_engine(sqlite_url(cli.home))
    review = {"verdict": "changes_requested", "summary": "rename x", "findings": [{"message": "x"}]}
    parked(engine, repo="app", checks=[CHECK, failed], review=review)
    log = cli.ok("log", "1")
    assert "on c0ffee000000: ✓ python3 -m unittest (0.4 s)" in log  # the checks
    assert "+2 -1 in 1 file(s); checks 1/2 passed; review changes requested; risk low" in log
    assert "1 file(s)" in log and "`nightcrew diff` shows it" in log  # the diff, not its text
    assert '{"commit"' not in log and "return a - b" not in log
    # What the model and the agent wrote stays text: no escape sequence, no markup.
    with transaction(engine) as s:
        said = {"verdict": "approve", "summary": "ok \x1b[2J[red]boom[/red]", "findings": []}
        record(s, 1, "review", said)
        record(s, 1, "scope", {"outside": ["\x1b]0;owned\x07evil.py"]})
    log = cli.ok("log", "1")
    assert "\x1b" not in log and "\x07" not in log
    assert "approve: ok [2J[red]boom[/red]" in log and "allowed_paths: ]0;ownedevil.py" in log
