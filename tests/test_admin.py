"""The admin port: /healthz and Prometheus /metrics over real HTTP, after real work: a task
run by a real worker (Docker, git, scripted model) and real deliveries to the Slack emulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update

from bot import actions
from bot.slack.app import notifier_client
from bot.slack.notifier import Notifier, Tunables
from executor.monitoring.admin import serve_admin
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Outbox, Task, utcnow
from tests.llm_server import Fault, ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator
from tests.slack_fixtures import slack_env
from tests.worker_fixtures import RunWorker, add_task, task, wait_for

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
FAST = Tunables(channel_interval_s=0, backoff_base_s=0.01, idle_poll_s=0.02)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def admin(engine: Engine) -> Iterator[str]:
    with serve_admin(engine, role="test", port=0) as url:
        yield url


def test_metrics_after_a_task_ran_through_a_worker(
    engine: Engine, admin: str, make_worker: RunWorker
) -> None:
    before = scrape(admin)
    assert value(before, "nightcrew_tasks", state="queued") == 0
    task_id = add_task(engine)
    assert value(scrape(admin), "nightcrew_tasks", state="queued") == 1  # read at scrape time

    script = [
        reply(tool_call("bash", {"command": "true"}), usage=(1000, 100)),
        reply(tool_call("finish", {"summary": "done"}), usage=(2000, 200)),
    ]
    with ScriptedLLM(script) as llm:
        assert make_worker(llm, model="gpt-4.1-mini").work(drain=True) == 1
    assert task(engine, task_id).state is State.AWAITING_APPROVAL
    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "nightcrew_tasks", state="queued") == 0
    assert value(after, "nightcrew_tasks", state="awaiting_approval") == 1
    assert delta("nightcrew_tasks_started_total", kind="run") == 1
    assert delta("nightcrew_tasks_finished_total", state="awaiting_approval") == 1
    assert delta("nightcrew_tasks_failed_total") == 0
    assert delta("nightcrew_agent_turn_seconds_count") == 2
    assert delta("nightcrew_agent_turn_seconds_sum") > 0
    assert delta("nightcrew_llm_request_seconds_count", outcome="ok") == 2
    assert delta("nightcrew_llm_tokens_total", kind="prompt") == 3000
    assert delta("nightcrew_llm_tokens_total", kind="completion") == 300
    # gpt-4.1-mini: $0.40 / $1.60 per million tokens
    assert delta("nightcrew_llm_cost_usd_total") == pytest.approx(0.0012 + 0.00048)


def test_a_model_that_is_down_parks_and_one_that_answers_garbage_fails(
    engine: Engine, admin: str, make_worker: RunWorker
) -> None:
    before = scrape(admin)
    down = add_task(engine)
    with ScriptedLLM([]) as llm:  # an empty script answers 500 to everything
        make_worker(llm).work(drain=True)
    assert task(engine, down).state is State.NEEDS_INPUT  # an outage parks, work kept
    garbage = add_task(engine)
    with ScriptedLLM([Fault(200, body="<html>not a completion</html>")] * 10) as llm:
        make_worker(llm).work(drain=True)
    assert task(engine, garbage).state is State.FAILED
    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("nightcrew_tasks_finished_total", state="needs_input") == 1
    assert delta("nightcrew_tasks_failed_total") == 1
    assert delta("nightcrew_tasks_finished_total", state="failed") == 1
    assert delta("nightcrew_llm_request_seconds_count", outcome="unavailable") >= 1
    assert delta("nightcrew_llm_request_seconds_count", outcome="ok") == 0
    assert value(after, "nightcrew_tasks", state="needs_input") == 1
    assert value(after, "nightcrew_tasks", state="failed") == 1


def test_slack_delivery_lag_and_errors(engine: Engine, admin: str, slack: SlackEmulator) -> None:
    notifier = Notifier(engine, notifier_client(slack_env(slack)), FAST)
    before = scrape(admin)
    add_task(engine)
    assert value(scrape(admin), "nightcrew_outbox_pending") == 1
    with transaction(engine) as s:  # the row was written 0.2 s ago: that is the lag
        s.execute(update(Outbox).values(created_at=utcnow() - timedelta(seconds=0.2)))
    slack.fail("chat.postMessage", status=503)
    assert notifier.deliver_due() == 1  # a transient failure: retried shortly
    wait_for(lambda: notifier.deliver_due() == 1 and bool(slack.messages()), timeout=10)

    slack.channel_error("C404")  # a permanent failure: recorded, not retried
    with transaction(engine) as s:
        actions.add(s, repo="app", prompt="elsewhere", requester="U1", channel="C404")
    assert notifier.deliver_due() == 1
    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("nightcrew_slack_delivery_lag_seconds_count", kind="card") == 1
    assert delta("nightcrew_slack_delivery_lag_seconds_sum", kind="card") >= 0.2
    assert delta("nightcrew_slack_delivery_errors_total", kind="transient") == 1
    assert delta("nightcrew_slack_delivery_errors_total", kind="permanent") == 1
    assert value(after, "nightcrew_outbox_pending") == 0


def test_healthz_says_whether_the_database_answers(engine: Engine, admin: str) -> None:
    ok = httpx.get(f"{admin}/healthz", timeout=10)
    assert ok.status_code == 200
    assert ok.json() == {"role": "test", "status": "ok", "database": "ok"}
    assert httpx.get(f"{admin}/nope", timeout=10).status_code == 404

    nowhere = make_engine("postgresql://nobody:x@127.0.0.1:1/none", create=False)
    with serve_admin(nowhere, role="bot", port=0) as url:
        down = httpx.get(f"{url}/healthz", timeout=10)
    assert down.status_code == 503
    assert down.json()["status"] == "unhealthy"
    assert "OperationalError" in down.json()["database"]


def test_probes_and_scrapes_do_not_wait_for_a_long_write(engine: Engine, admin: str) -> None:
    """A writer holding the database for seconds (SQLite's write lock; a row lock on
    PostgreSQL) must not time out the health check: probes only read."""
    add_task(engine)
    holding, done = threading.Event(), threading.Event()

    def long_write() -> None:
        with transaction(engine) as s:
            s.exec(update(Task).values(reason="busy"))  # type: ignore[call-overload]
            holding.set()
            done.wait(10)

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert httpx.get(f"{admin}/healthz", timeout=10).status_code == 200
        assert "nightcrew_tasks" in httpx.get(f"{admin}/metrics", timeout=10).text
        assert time.monotonic() - started < 5.0, "the probe queued behind the writer (10 s)"
    finally:
        done.set()
        writer.join()


@pytest.mark.parametrize("command", ["executor", "up", "bot --http --port 0"])
def test_each_process_serves_its_admin_port(
    command: str, tmp_path: Path, git_repo: Path, sandbox_image: str, slack: SlackEmulator
) -> None:
    """A real `nightcrew` process with NIGHTCREW_ADMIN_PORT: probed, scraped, stopped."""
    role = command.split()[0]
    port = str(_free_port())
    env = {
        **_clean_env(),
        "NIGHTCREW_HOME": str(tmp_path / "home"),
        "NIGHTCREW_MODEL": "m",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "NIGHTCREW_ADMIN_PORT": port,
        **(slack.env() if role == "bot" else {}),
    }
    proc = subprocess.Popen(
        [NIGHTCREW, *command.split()],
        cwd=git_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    ready = {"executor": "worker(s)", "up": "worker(s)", "bot": "Slack bot: HTTP mode"}[role]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: any(ready in line for line in lines) or proc.poll() is not None, 60)
        assert proc.poll() is None, "".join(lines)
        assert _answers(f"{url}/healthz")
        assert httpx.get(f"{url}/healthz").json() == {
            "role": role,
            "status": "ok",
            "database": "ok",
        }
        samples = scrape(url)
        assert value(samples, "nightcrew_tasks", state="queued") == 0
        assert ("nightcrew_llm_cost_usd_total", frozenset()) in samples
    finally:
        proc.send_signal(signal.SIGTERM)  # once running, a clean stop
        proc.wait(timeout=60)
        reader.join(10)
    output = "".join(lines)
    assert f"admin: http://127.0.0.1:{port}/healthz" in output
    assert proc.returncode == 0, output


def test_a_taken_admin_port_is_a_clear_error(tmp_path: Path, git_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [NIGHTCREW, "executor"],
            cwd=git_repo,
            env=_clean_env()
            | {"NIGHTCREW_HOME": str(tmp_path / "home"), "NIGHTCREW_ADMIN_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot serve the admin port on 127.0.0.1:{port}:")
    assert "choose another with --admin-port (NIGHTCREW_ADMIN_PORT)" in done.stderr
    assert "Traceback" not in done.stderr


def _clean_env() -> dict[str, str]:
    prefixes = ("NIGHTCREW_", "SLACK_", "OPENAI_", "DOCKER_HOST")
    kept = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return kept | {"COLUMNS": "200", "NIGHTCREW_WEB_PORT": "0"}  # tests run side by side


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
