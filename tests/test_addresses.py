"""Where each server of `nightcrew up`, `bot` and `executor` listens: two instances side by
side on one machine (their own repos, homes and ports) both answer /healthz on the port
given with `--port` (Slack's HTTP mode) and `--admin-port`; loopback unless told otherwise;
a taken port is one clear line naming the port and the option that changes it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import git
from tests.slack_emulator import SlackEmulator
from tests.waiting import wait_for

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# app\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    return path


def environment(home: Path, slack: SlackEmulator | None) -> dict[str, str]:
    prefixes = ("NIGHTCREW_", "SLACK_", "OPENAI_", "DOCKER_HOST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env |= {
        "COLUMNS": "200",
        "NIGHTCREW_HOME": str(home),
        "NIGHTCREW_MODEL": "m",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    if slack is not None:  # HTTP mode: a bot token and a signing secret, no app token
        env |= {k: v for k, v in slack.env().items() if k != "SLACK_APP_TOKEN"}
    return env


def healthy(url: str) -> dict[str, str] | None:
    try:
        answer = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


@pytest.fixture
def http_slack() -> Iterator[SlackEmulator]:
    with SlackEmulator(tokens=("xoxb-test",)) as emulator:
        yield emulator


def test_two_instances_side_by_side_both_answer_healthz_on_their_ports(
    tmp_path: Path, sandbox_image: str, http_slack: SlackEmulator
) -> None:
    procs: list[tuple[subprocess.Popen[str], Path, dict[str, int]]] = []
    try:
        for name in ("one", "two"):
            repo = make_repo(tmp_path / name)
            ports = {"port": free_port(), "admin": free_port(), "web": free_port()}
            log = tmp_path / f"{name}.log"
            command = [NIGHTCREW, "up", "--port", str(ports["port"])]
            command += ["--admin-port", str(ports["admin"]), "--web-port", str(ports["web"])]
            with log.open("w") as out:
                proc = subprocess.Popen(
                    command,
                    cwd=repo,
                    env=environment(tmp_path / f"{name}-home", http_slack),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            procs.append((proc, log, ports))
        for proc, log, ports in procs:
            main = f"http://127.0.0.1:{ports['port']}/healthz"

            def up_and_answering(proc: subprocess.Popen[str] = proc, main: str = main) -> bool:
                assert proc.poll() is None, "exited early"
                return healthy(main) is not None

            wait_for(up_and_answering, 60, lambda log=log: log.read_text())
            assert healthy(main) == {"role": "bot", "status": "ok", "database": "ok"}
            admin = healthy(f"http://127.0.0.1:{ports['admin']}/healthz")
            assert admin == {"role": "up", "status": "ok", "database": "ok"}
            output = log.read_text()
            assert f"Slack bot: HTTP mode at http://127.0.0.1:{ports['port']}/slack/events" in (
                output
            )
            assert f"pages: http://127.0.0.1:{ports['web']}" in output
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in procs:
            proc.wait(timeout=60)
    for proc, log, _ in procs:
        assert proc.returncode == 0, log.read_text()


@pytest.mark.parametrize(
    ("command", "flag", "option"),
    [
        (["up"], "--port", "--port (NIGHTCREW_PORT)"),
        (["bot", "--http"], "--port", "--port (NIGHTCREW_PORT)"),
        (["up"], "--web-port", "--web-port (NIGHTCREW_WEB_PORT; -1: no pages)"),
        (["executor"], "--admin-port", "--admin-port (NIGHTCREW_ADMIN_PORT)"),
    ],
)
def test_a_taken_port_is_one_clear_line_naming_it_and_its_option(
    command: list[str], flag: str, option: str, tmp_path: Path, http_slack: SlackEmulator
) -> None:
    repo = make_repo(tmp_path / "app")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        others = [] if flag == "--web-port" or command == ["executor"] else ["--web-port", "0"]
        done = subprocess.run(
            [NIGHTCREW, *command, flag, str(port), *others],
            cwd=repo,
            env=environment(tmp_path / "home", http_slack),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot serve" in done.stderr and f"127.0.0.1:{port}: the port is in use" in done.stderr
    assert done.stderr.rstrip().endswith(f"choose another with {option}")
    assert "Traceback" not in done.stderr


def test_the_environment_sets_what_the_options_do(
    tmp_path: Path, http_slack: SlackEmulator
) -> None:
    """NIGHTCREW_PORT and NIGHTCREW_HOST stand for --port and --host (the image sets the
    hosts to 0.0.0.0); an address that is not this machine's is a clear error too."""
    repo = make_repo(tmp_path / "app")
    env = environment(tmp_path / "home", http_slack)
    env |= {"NIGHTCREW_HOST": "192.0.2.1", "NIGHTCREW_PORT": "0", "NIGHTCREW_WEB_PORT": "-1"}
    done = subprocess.run(
        [NIGHTCREW, "bot", "--http"], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "cannot serve Slack's HTTP mode on 192.0.2.1:0:" in done.stderr
    assert done.stderr.rstrip().endswith("choose another with --port (NIGHTCREW_PORT)")
