"""The README's Quick start works as written: its command blocks run in order, in a fresh
repo of the user's own, with nightcrew installed the way it says (`uv tool install`), against
the scripted model, until the task waits for approval and merges. Only two things are
substituted: where nightcrew's checkout is, and the model server's URL.

Every other `sh` block of the README is either run here too or says, in a
`<!-- not run by tests: <why> -->` comment on the line above it, why no test runs it; a
command block in any other fence (`bash`, `console`, an unlabelled one with commands) fails,
so no block goes untested unseen."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GIT_ENV, git
from tests.llm_server import ScriptedLLM, reply, tool_call

ROOT = Path(__file__).resolve().parent.parent
MODEL_URL = "http://localhost:8080/v1"  # the README's example of a local server
BLOCK_TIMEOUT_S = 300


SKIP = re.compile(r"^<!-- not run by tests: (.{20,}?) -->$")
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)
SHELLS = {"bash", "shell", "console", "zsh", "shell-session", "sh-session"}
COMMAND = re.compile(r"^\s*(\$ |nightcrew |uv |docker |git |cd |sudo |export )", re.M)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    section: str  # the `## ` heading it is under
    line: int  # where its fence opens (1-based)
    skip: str | None  # the reason on the line above, if any


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^## (.+)$", before, flags=re.M)
        above = before.rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(above)
        out.append(
            Block(
                lang=match[1],
                body=match[2],
                section=headings[-1] if headings else "",
                line=before.count("\n") + 1,
                skip=skip[1] if skip else None,
            )
        )
    return out


def test_every_sh_block_is_run_or_says_why_not() -> None:
    """The Quick start's blocks are run (below), none of them skipped; every other `sh` block
    carries its reason for not being run."""
    blocks = [b for b in readme_blocks() if b.lang == "sh"]
    run = [b for b in blocks if b.section == "Quick start"]
    assert [b.body for b in run] == quick_start() and len(run) >= 5
    assert [b.line for b in run if b.skip] == [], "the Quick start is run whole"
    unmarked = [(b.line, b.body) for b in blocks if b.section != "Quick start" and not b.skip]
    assert unmarked == [], (
        "README sh blocks no test runs, without `<!-- not run by tests: <why> -->` above them"
    )


def test_no_command_block_hides_from_the_test_in_another_fence() -> None:
    hidden = [
        (b.line, b.lang, b.body)
        for b in readme_blocks()
        if b.lang in SHELLS or (b.lang == "" and COMMAND.search(b.body))
    ]
    assert hidden == [], "command blocks must be ```sh so tests/test_readme.py sees them"


def test_the_skip_marker_is_seen_and_needs_a_reason() -> None:
    """The check above cannot pass by accident: a marker without a reason, or a block with
    none, is found."""
    assert SKIP.match("<!-- not run by tests: needs a Slack workspace and its tokens -->")
    assert not SKIP.match("<!-- not run by tests: -->")
    assert not SKIP.match("<!-- not run by tests: later -->")
    skipped = [b for b in readme_blocks() if b.skip]
    assert skipped and all(b.lang == "sh" and b.section != "Quick start" for b in skipped)


def quick_start() -> list[str]:
    """The `sh` blocks of the README's Quick start section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_quick_start_has_the_newcomers_path() -> None:
    text = "".join(quick_start())
    for step in ("uv tool install", "nightcrew init", "NIGHTCREW_MODEL=", "nightcrew up",
                 "nightcrew add", "--follow", "nightcrew diff", "nightcrew approve"):  # fmt: skip
        assert step in text, step
    assert "--project" not in text and "uv run" not in text  # one way to run it: on PATH
    assert MODEL_URL in text


def user_env(tmp: Path) -> dict[str, str]:
    """A newcomer's shell: no nightcrew settings, no dev virtualenv on PATH, uv's tools
    installed under `tmp`."""
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and p != dev_bin]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NIGHTCREW_", "OPENAI_", "SLACK_", "VIRTUAL_ENV", "UV_PROJECT"))
    }
    tools = tmp / "uv-tools"
    env |= GIT_ENV | {
        "UV_TOOL_DIR": str(tools / "envs"),
        "UV_TOOL_BIN_DIR": str(tools / "bin"),
        "PATH": os.pathsep.join([str(tools / "bin"), *path]),
    }
    return env


def run_block(text: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One block in bash, in a session of its own: a block that times out takes whatever it
    started with it (a `log --follow` left behind would outlive the test)."""
    with subprocess.Popen(
        ["bash", "-e", "-c", text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as block:
        try:
            out, err = block.communicate(timeout=BLOCK_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(block.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(block.args, block.returncode, out, err)


def test_the_quick_start_runs_as_written(tmp_path: Path, sandbox_image: str) -> None:
    assert sandbox_image  # built from the current recipe, as `doctor --fix` would
    repo = tmp_path / "your-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# a project\n\nRun the tests with `python3 -m unittest`.\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "a project")
    env = user_env(tmp_path)
    contributing = "# Contributing\n\nRun the tests with `python3 -m unittest`.\n"
    script = [
        reply(content="OK"),  # doctor's one tiny request
        reply(tool_call("write_file", {"path": "CONTRIBUTING.md", "content": contributing})),
        reply(tool_call("finish", {"summary": "Added CONTRIBUTING.md with the test command."})),
        reply(tool_call("submit_review", {"verdict": "approve", "summary": "fine"})),
    ]
    outputs: list[str] = []
    cwd = tmp_path
    up: subprocess.Popen[str] | None = None
    with ScriptedLLM(script) as llm:
        try:
            for block in quick_start():
                text = block.replace("/path/to/nightcrew", str(ROOT)).replace(
                    MODEL_URL, llm.base_url
                )
                if text.strip() == "nightcrew up":  # "leave it running": in the background
                    log = (tmp_path / "up.log").open("w")
                    up = subprocess.Popen(
                        ["nightcrew", "up"], cwd=cwd, env=env, stdout=log, stderr=log, text=True
                    )
                    continue
                where = tmp_path / "cwd"
                done = run_block(f"{text}\npwd > {where}", cwd, env)
                said = (tmp_path / "up.log").read_text() if up else ""
                assert done.returncode == 0, (text, done.stdout, done.stderr, said)
                outputs.append(done.stdout + done.stderr)
                cwd = Path(where.read_text().strip())
        finally:
            if up is not None:
                up.send_signal(signal.SIGINT)
                up.wait(60)
    assert up is not None, "the Quick start never runs `nightcrew up`"
    assert cwd == repo
    everything = "\n".join(outputs)
    assert "Failed to spawn" not in everything and "will be unused" not in everything
    watched = outputs[-1]
    assert "running → checking" in watched and "awaiting_approval" in watched
    assert "+++ b/CONTRIBUTING.md" in watched  # nightcrew diff 1
    assert re.search(
        r"approved task 1; branch nightcrew/1-add-a-contributing\S* merges into main", watched
    )
    assert "merging → merged" in watched
    assert (repo / "CONTRIBUTING.md").read_text() == contributing  # the user's checkout
    subject = git(repo, "log", "-1", "--format=%s", "main^2")
    assert subject == "add a CONTRIBUTING.md that says how to run the tests"
    assert "Added CONTRIBUTING.md" in git(repo, "log", "-1", "--format=%B", "main")


@pytest.mark.parametrize("block", [b.body for b in readme_blocks() if b.lang == "sh"])
def test_every_sh_block_is_shell(block: str) -> None:
    """What the test above runs (and what the skipped blocks show) is what a person pastes:
    plain shell, nothing hidden."""
    assert subprocess.run(["bash", "-n", "-c", block], capture_output=True).returncode == 0
