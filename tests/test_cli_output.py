"""The CLI's output serves people at a terminal and scripts at the end of a pipe: real
`nightcrew` processes, with a pipe or a real pseudo-terminal as their stdout."""

from __future__ import annotations

import getpass
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from bot import actions
from storage.db import make_engine, sqlite_url, transaction
from tests.test_cli import NIGHTCREW

LONG = (
    "rename the frobnicator in the widget factory and update every caller, the docs, the "
    "changelog and the migration guide so that nothing refers to the old name zebra"
)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NIGHTCREW_HOME": str(home)}
    for name in ("NIGHTCREW_CONFIG", "NIGHTCREW_DATABASE_URL", "FORCE_COLOR", "NO_COLOR"):
        env.pop(name, None)
    return env | extra


def run(repo: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`nightcrew ARGS` with its stdout a pipe, as a script runs it."""
    return subprocess.run(
        [NIGHTCREW, *args],
        cwd=repo,
        env=env_for(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_in_terminal(repo: Path, home: Path, *args: str, columns: int = 120, **extra: str) -> str:
    """`nightcrew ARGS` on a real pseudo-terminal, as a person runs it; what it showed."""
    leader, follower = pty.openpty()
    env = env_for(home, COLUMNS=str(columns), TERM="xterm-256color", **extra)
    proc = subprocess.Popen(
        [NIGHTCREW, *args], cwd=repo, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        assert ready, "the command went quiet on its terminal"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(30) == 0
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def add_as(home: Path, repo: str, prompt: str, requester: str) -> None:
    """A task queued by someone else, or for another repo (the Slack side of the house)."""
    engine = make_engine(sqlite_url(home))
    with transaction(engine) as s:
        actions.add(s, repo=repo, prompt=prompt, requester=requester)
    engine.dispose()


def test_ls_in_a_pipe_is_one_line_per_task_whatever_the_width(git_repo: Path, home: Path) -> None:
    assert run(git_repo, home, "add", LONG).returncode == 0
    assert run(git_repo, home, "add", "short one").returncode == 0
    narrow = run(git_repo, home, "ls", COLUMNS="40").stdout
    wide = run(git_repo, home, "ls", COLUMNS="300").stdout
    assert narrow == wide
    lines = narrow.splitlines()
    assert lines[0].split("\t") == ["ID", "STATE", "REPO", "PROMPT", "BY", "CREATED", "COST"]
    matches = [line for line in lines if "zebra" in line]  # `nightcrew ls | grep zebra`
    assert len(matches) == 1 and LONG in matches[0] and matches[0].startswith("1\tqueued\t")
    assert "…" not in narrow and "\x1b" not in narrow
    assert not any(line != line.rstrip() for line in lines), "padding in a pipe"
    headless = run(git_repo, home, "ls", "--no-header").stdout.splitlines()
    assert headless == lines[1:]


def test_add_show_and_log_never_wrap_in_a_pipe(git_repo: Path, home: Path) -> None:
    added = run(git_repo, home, "add", LONG, COLUMNS="40").stdout
    assert added.count("\n") == 1 and "queued task 1 on app" in added
    assert run(git_repo, home, "nudge", "1", LONG).returncode == 0  # for the log
    for command in (["show", "1"], ["log", "1"], ["digest"]):
        narrow = run(git_repo, home, *command, COLUMNS="40").stdout
        assert LONG in narrow, command
        assert "\x1b" not in narrow and "…" not in narrow
        assert "state\tqueued" in narrow or command != ["show", "1"]
    # An error is one line on stderr, the same bytes whatever the width.
    refused = [run(git_repo, home, "nudge", "1", " ", COLUMNS=c).stderr for c in ("40", "300")]
    assert refused[0] == refused[1] and refused[0].count("\n") == 1, refused
    assert "the nudge is empty" in refused[0] and len(refused[0]) > 40


def test_json_output_has_the_documented_fields(git_repo: Path, home: Path) -> None:
    run(git_repo, home, "add", LONG)
    listing = run(git_repo, home, "ls", "--json")
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=listing.stdout, capture_output=True, text=True
    )
    assert tool.returncode == 0, tool.stderr  # `nightcrew ls --json | python -m json.tool`
    (task,) = json.loads(listing.stdout)
    assert (task["id"], task["state"], task["prompt"]) == (1, "queued", LONG)
    shown = [json.loads(run(git_repo, home, "show", "1", "--json", COLUMNS=c).stdout)
             for c in ("40", "300")]  # fmt: skip
    assert shown[0] == shown[1]
    one = shown[0]
    assert {"id", "state", "prompt", "branch", "cost", "working_s"} <= one.keys()
    assert one["branch"] == "nightcrew/1-rename-the-frobnicator-in-the-widget-fac"
    assert one["cost"] == {"usd": 0.0, "nanos": 0, "unpriced_tokens": 0}
    log = run(git_repo, home, "log", "1", "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in log] == ["created"]
    for command in (["budget"], ["repos"], ["digest"]):
        assert json.loads(run(git_repo, home, *command, "--json").stdout), command
    assert json.loads(run(git_repo, home, "repos", "--json").stdout)[0]["name"] == "app"


def test_show_json_gives_each_nudge_its_files_edit_and_withdrawal(
    git_repo: Path, home: Path
) -> None:
    from storage import nudge_files
    from storage.tasks import complete_nudge_files, edit_nudge, withdraw_nudge
    from tests.slack_samples import load_json

    run(git_repo, home, "add", "fix the parser")
    shared = load_json("event_message_file_share.json")["event"]["files"]  # Slack's own shape
    engine = make_engine(sqlite_url(home))
    with transaction(engine) as s:
        actions.nudge(s, 1, "keep the API", actor=getpass.getuser())
        actions.nudge(
            s, 1, "see the log", actor="U2", source="slack", slack_ts="1.1",
            files=nudge_files.refs(shared),
        )  # fmt: skip
        actions.nudge(s, 1, "wrong task, sorry", actor="U2", source="slack", slack_ts="1.2")
    with transaction(engine) as s:
        assert edit_nudge(s, 2, "see the screenshot", by="U2")  # edited in Slack
        assert withdraw_nudge(s, 3)  # deleted in Slack before the agent read it
    before = json.loads(run(git_repo, home, "show", "1", "--json").stdout)["nudges"]
    with transaction(engine) as s:
        assert complete_nudge_files(s, 2, 'File "file.png" is an image: not shown.')
    engine.dispose()
    shown = run(git_repo, home, "show", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    plain, screenshot, withdrawn = json.loads(shown.stdout)["nudges"]
    assert plain["id"] == 1 and plain["source"] == "cli" and plain["files"] == []
    assert not (plain["edited"] or plain["withdrawn"] or plain["files_pending"])
    assert (plain["edited_at"], plain["withdrawn_at"]) == (None, None)
    assert screenshot["source"] == "slack" and screenshot["edited"]
    assert screenshot["edited_at"] and screenshot["edited_at"] >= screenshot["at"]
    assert screenshot["files"] == [{"name": "file.png", "type": "image/png", "size": 92582}]
    assert before[1]["files_pending"] and not screenshot["files_pending"]
    assert screenshot["text"] == 'see the screenshot\n\nFile "file.png" is an image: not shown.'
    assert withdrawn["withdrawn"] and withdrawn["withdrawn_at"] and not withdrawn["taken"]
    assert (withdrawn["text"], withdrawn["files"]) == ("", [])  # the words were taken back
    # A person reading `show` sees the same: the edit, the file, and nothing withdrawn.
    human = run(git_repo, home, "show", "1").stdout
    assert "[pending] U2 (edited): see the screenshot" in human
    assert "    files: file.png" in human
    assert "wrong task" not in human and "keep the API" in human


def test_ls_filters_combine(git_repo: Path, home: Path) -> None:
    run(git_repo, home, "add", "mine on app")
    add_as(home, "app", "theirs on app", "U2")
    add_as(home, "web", "mine on web", f"local:{getpass.getuser()}")
    run(git_repo, home, "cancel", "1")

    def prompts(*args: str) -> list[str]:
        return [t["prompt"] for t in json.loads(run(git_repo, home, "ls", "--json", *args).stdout)]

    assert prompts("--mine") == ["mine on web"]  # task 1 is cancelled: closed
    assert prompts("--mine", "--all") == ["mine on web", "mine on app"]
    assert prompts("--mine", "--repo", "app", "--state", "cancelled") == ["mine on app"]
    assert prompts("--repo", "app") == ["theirs on app"]
    assert prompts("--mine", "--repo", "app", "--state", "queued") == []


def test_exit_codes_are_0_ok_1_error_2_usage(git_repo: Path, home: Path) -> None:
    assert run(git_repo, home, "ls").returncode == 0
    assert run(git_repo, home, "show", "7").returncode == 1
    assert run(git_repo, home, "ls", "--no-such-option").returncode == 2
    assert run(git_repo, home, "show").returncode == 2


def test_help_reads_as_sentences(git_repo: Path, home: Path) -> None:
    top = run(git_repo, home, "--help", COLUMNS="200").stdout
    assert "<bool>" not in top and "╭" not in top
    doctor = run(git_repo, home, "doctor", "--help", COLUMNS="200").stdout
    assert "<bool>" not in doctor
    assert (
        "Check the config, database, Docker engine, sandbox images, model endpoint and Slack "
        "app; print a fix for each problem." in " ".join(doctor.split())
    )
    assert "and Slack\n" not in doctor, doctor  # the docstring's own line break
    listing = run(git_repo, home, "ls", "--help", COLUMNS="200").stdout
    assert "--json" in listing
    # Options name what they take, not a Python type.
    assert "--state STATE" in listing and "--repo REPO" in listing and "<" not in listing


def test_a_terminal_gets_a_table_with_colour(git_repo: Path, home: Path) -> None:
    run(git_repo, home, "add", LONG)
    shown = run_in_terminal(git_repo, home, "ls", columns=100)
    assert "\x1b[" in shown  # colour
    assert "ID" in shown and "STATE" in shown and "\t" not in shown
    assert "…" in shown  # a long prompt is cut to the screen, not wrapped into a mess


def test_hostile_text_stays_on_its_line(git_repo: Path, home: Path) -> None:
    """A prompt (from Slack, or a scheduled task's text) with line breaks, tabs and escape
    sequences: in a pipe, still one task per line and no escape reaches the reader."""
    hostile = "first line\nsecond\tline \x1b[2J\x1b]0;pwned\x07 zebra"
    add_as(home, "app", hostile, "U2")
    listing = run(git_repo, home, "ls", "--no-header").stdout
    assert listing.count("\n") == 1 and "zebra" in listing and "\x1b" not in listing
    assert listing.split("\t")[3] == "first line second line [2J]0;pwned zebra"
    (task,) = json.loads(run(git_repo, home, "ls", "--json").stdout)
    assert "\x1b" not in task["prompt"] and "\x07" not in task["prompt"]
    assert "\x1b" not in run(git_repo, home, "show", "1").stdout


def test_a_cell_with_paragraphs_is_one_line_without_empty_items() -> None:
    from rich.table import Table

    from bot.terminal.output import plain_lines

    table = Table("KEY", "VALUE")
    table.add_row("summary", "wrote the guide.\n\n CONTRIBUTING.md | 3 +++\n\t1 file changed")
    assert list(plain_lines(table, header=False)) == [
        "summary\twrote the guide.; CONTRIBUTING.md | 3 +++; 1 file changed"
    ]
