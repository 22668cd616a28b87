"""Secrets go only where named. `agent_env` reaches the agent's process and nothing else (not
the repo's setup, not its checks, not the container's environment); credentials in a repo URL
never leave the host-git layer (task reasons, events, outbox rows for Slack, logs, `show`,
`ls`, `repos`, `doctor`); no command prints the database password."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlmodel import select

from executor.agents.llm import LLMClient
from executor.config.schema import load_config
from executor.runner.worker import Worker
from storage.db import make_engine, normalize_url, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Outbox, Task, TaskEvent
from tests.conftest import PG_ADMIN_URL, git
from tests.llm_server import ScriptedLLM
from tests.test_cli import NIGHTCREW, Cli, _fresh_composition
from tests.test_doctor import run_doctor
from tests.worker_fixtures import RunWorker, add_task, task

TOKEN = "NC_HOSTILE_TEST_TOKEN"


def test_agent_env_reaches_the_agent_only(
    engine: Engine,
    make_worker: RunWorker,
    monkeypatch: pytest.MonkeyPatch,
    project: Path,
) -> None:
    value = f"tok-{secrets.token_hex(8)}"
    digest = hashlib.sha256(value.encode()).hexdigest()
    monkeypatch.setenv(TOKEN, value)
    task_id = add_task(engine, "use your token")
    seen = f"printenv {TOKEN} > /dev/null && echo seen || echo unseen"
    repo_options = {
        "agent": "command",
        "agent_env": [TOKEN],
        # The agent proves it got the token (and leaves it out of the repo).
        "agent_command": (
            f'test "$(printf %s "${TOKEN}" | sha256sum | cut -c1-64)" = {digest} && '
            "echo agent-had-it > proof.txt && git add proof.txt && git commit -qm 'agent work'"
        ),
        # Setup and checks must not see it.
        "setup": [f"{seen}; ! printenv {TOKEN}"],
        "checks": [f"{seen}; ! printenv {TOKEN}"],
    }
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=repo_options).work(drain=True)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    with transaction(engine) as s:
        log = list(s.exec(select(TaskEvent).where(TaskEvent.task_id == task_id)).all())
    setup = [e.payload for e in log if e.kind == "setup"]
    checks = [e.payload for e in log if e.kind == "checks"]
    assert "unseen" in setup[0]["output"], setup
    assert checks[0]["results"][0]["exit_code"] == 0, checks
    assert value not in str([e.payload for e in log])
    assert git(project, "show", f"{done.branch}:proof.txt") == "agent-had-it"


# --- credentials in a repo URL --------------------------------------------------------------

PASSWORD = f"s3cr3t-{uuid.uuid4().hex[:12]}"


def test_credentials_in_a_repo_url_never_leave_the_git_layer(
    cli: Cli,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_executor: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A clone that fails: git's error names the URL, and so did ours.
    url = f"http://nc-user:{PASSWORD}@127.0.0.1:9/org/app.git"
    token_only = f"https://{PASSWORD}x@127.0.0.1:9/org/lib.git"  # a token as the user name
    (cli.repo / "nightcrew.yaml").write_text(
        f"repos:\n  app:\n    url: {url}\n  lib:\n    url: {token_only}\ndefault_repo: app\n"
    )
    cli.ok("add", "anything")
    cli.ok("add", "--repo", "lib", "anything else")
    engine = make_engine(sqlite_url(cli.home))
    caplog.set_level(logging.DEBUG)
    with ScriptedLLM([]) as llm, LLMClient(base_url=llm.base_url, api_key=None, model="m") as c:
        worker = Worker(
            engine=engine,
            config=load_config(cli.repo / "nightcrew.yaml"),
            home=cli.home,
            docker=docker_client,
            llm=c,
            worker_id=f"{test_executor}/0",
            executor_id=test_executor,
        )
        assert worker.work(drain=True) == 2
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        monkeypatch.setenv("NIGHTCREW_MODEL", "m")
        doctor = cli("doctor")
    with transaction(engine) as s:
        tasks = s.exec(select(Task)).all()
        stored = str([t.model_dump() for t in tasks])
        stored += str([e.model_dump() for e in s.exec(select(TaskEvent)).all()])
        stored += str([o.model_dump() for o in s.exec(select(Outbox)).all()])  # Slack's input
    engine.dispose()
    assert [t.state for t in tasks] == [State.FAILED, State.FAILED]
    assert "127.0.0.1:9" in tasks[0].reason  # the reason still says where it failed
    shown = cli.ok("show", "1") + cli.ok("show", "2") + cli.ok("ls", "--all") + cli.ok("repos")
    said = {
        "stored": stored,
        "cli": shown,
        "doctor": doctor.stdout + doctor.stderr,
        "logs": caplog.text,
    }
    for where, words in said.items():
        assert PASSWORD not in words, where
    assert "127.0.0.1:9/org/app.git" in cli.ok("repos").replace("\n", "")  # still shown


# --- the database password ------------------------------------------------------------------


@pytest.fixture
def pg_with_password() -> Iterator[tuple[str, str]]:
    """A database owned by a role of its own with a random password: (URL, password)."""
    admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name, password = f"nc_{uuid.uuid4().hex[:10]}", f"pw{uuid.uuid4().hex}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
            conn.execute(text(f'CREATE DATABASE "{name}" OWNER {name}'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required: {exc}")
    host = normalize_url(PG_ADMIN_URL).split("@", 1)[1].rsplit("/", 1)[0]
    yield f"postgresql://{name}:{password}@{host}/{name}", password
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
    admin.dispose()


def test_no_command_prints_the_database_password(
    git_repo: Path, tmp_path: Path, pg_with_password: tuple[str, str]
) -> None:
    url, password = pg_with_password
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NIGHTCREW_", "SLACK_", "OPENAI_"))
    }
    env |= {"NIGHTCREW_HOME": str(tmp_path / "home"), "NIGHTCREW_DATABASE_URL": url}
    said = []
    for args in (["up"], ["executor", "--drain"], ["bot"], ["ls"]):
        done = subprocess.run(
            [NIGHTCREW, *args], cwd=git_repo, env=env, capture_output=True, text=True, timeout=60
        )
        said.append((args, done.stdout + done.stderr))
    wrong = env | {"NIGHTCREW_DATABASE_URL": url.replace(password, password + "-wrong")}
    done = subprocess.run(
        [NIGHTCREW, "ls"], cwd=git_repo, env=wrong, capture_output=True, text=True, timeout=60
    )
    said.append((["ls", "(wrong password)"], done.stdout + done.stderr))
    doctor = run_doctor(git_repo, {"NIGHTCREW_DATABASE_URL": url})
    said.append((["doctor"], doctor.stdout + doctor.stderr))
    assert "database:" in said[0][1]  # `up` still says which database
    for args, words in said:
        assert password not in words, (args, words)


@pytest.fixture
def cli(git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    yield Cli(git_repo, tmp_path / "home", monkeypatch)
    _fresh_composition()


def test_model_endpoint_credentials_stay_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OPENAI_BASE_URL may carry credentials (a proxy's user:token@): a failing endpoint's
    error and the retry log name the endpoint without them."""
    from executor.agents.llm import LLMClient, LLMUnavailable

    client = LLMClient(
        base_url="http://nightcrew:s3cret-token@127.0.0.1:9/v1",  # port 9: nothing listens
        api_key=None,
        model="m",
        timeout=2,
        max_attempts=2,
        backoff=0.01,
        max_wait=0.05,
    )
    with caplog.at_level("WARNING"), pytest.raises(LLMUnavailable) as raised:
        client.complete([{"role": "user", "content": "hi"}])
    assert "s3cret-token" not in str(raised.value)
    assert "http://***@127.0.0.1:9/v1/chat/completions" in str(raised.value)
    assert "s3cret-token" not in caplog.text and "waiting for the endpoint" in caplog.text
