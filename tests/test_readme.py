"""The README's Quick start works as written: its command blocks run in order, in a fresh
repo of the user's own, with nightcrew installed the way it says (`uv tool install`), against
the scripted model, until the task waits for approval and merges. Only two things are
substituted: where nightcrew's checkout is, and the model server's URL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GIT_ENV, git
from tests.llm_server import ScriptedLLM, reply, tool_call

ROOT = Path(__file__).resolve().parent.parent
MODEL_URL = "http://localhost:8080/v1"  # the README's example of a local server
BLOCK_TIMEOUT_S = 300


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
                done = subprocess.run(
                    ["bash", "-e", "-c", f"{text}\npwd > {where}"],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                )
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


@pytest.mark.parametrize("block", quick_start())
def test_every_quick_start_block_is_shell(block: str) -> None:
    """What the test above runs is what a person pastes: plain shell, nothing hidden."""
    assert subprocess.run(["bash", "-n", "-c", block], capture_output=True).returncode == 0
