"""Slash-command ack latency in HTTP mode under concurrent clients, and Web API calls per task.

    uv run python bench/ack.py [--clients 50] [--commands 500]

Runs the real Bolt app against the local Slack emulator (real HTTP, signed requests) on a
fresh SQLite database. Goals: ack p99 at most 50 ms; 12 or fewer Web API calls for a
30-turn task."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.slack.app import build_app
from executor.config.schema import Config, RepoConfig
from storage.db import make_engine
from tests.slack_emulator import SlackEmulator, slash_command
from tests.slack_emulator.http_mode import encode, sign
from tests.slack_fixtures import slack_env
from tests.test_slack_load import run_whole_task


def app_for(slack: SlackEmulator, root: Path):
    engine = make_engine(f"sqlite:///{root / 'bench.db'}")
    env = slack_env(slack, socket_mode=False)
    config = Config(repos={"api": RepoConfig(path=root)})
    return engine, build_app(engine, lambda: config, env)


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU time (user + system) of `pid` and (with `children`) its descendants so far (Linux
    /proc): what the bot spends per command, which a noisy machine's latency figures hide."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return total
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                total += cpu_seconds(int(child))
    return total


@contextmanager
def bot_process(
    slack: SlackEmulator, root: Path, workers: int
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`nightcrew bot --http` as its own process, as it runs in production: the clients and
    the emulator here do not share its interpreter."""
    if not (root / "nightcrew.yaml").exists():  # else the caller's (bench/dispatch.py)
        subprocess.run(["git", "init", "-q", str(root / "repo")], check=True)
        (root / "nightcrew.yaml").write_text(f"repos:\n  api: {{path: {root / 'repo'}}}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        **slack.env(),
        "NIGHTCREW_HOME": str(root / "home"),
        "NIGHTCREW_CONFIG": str(root / "nightcrew.yaml"),
        "NIGHTCREW_WEB_PORT": "-1",  # no pages: a taken 8780 would stop the start
    }
    nightcrew = str(Path(sys.executable).with_name("nightcrew"))
    proc = subprocess.Popen(
        [nightcrew, "bot", "--http", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/slack/events"
    try:
        for _ in range(300):
            # Every worker process has built its app (one auth.test each) and one answers.
            with contextlib.suppress(httpx.HTTPError):
                if len(slack.calls("auth.test")) >= workers:
                    httpx.get(url, timeout=0.5)
                    break
            if proc.poll() is not None:
                raise SystemExit(
                    f"nightcrew bot exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(20)


def signed(slack: SlackEmulator, payload: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A slash command's body and headers, signed as Slack signs them."""
    content_type, body = encode(slack._own_response_urls(payload))
    ts = int(time.time())
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(slack.signing_secret, ts, body),
    }
    return body.encode(), headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="HTTP server processes")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        SlackEmulator() as slack,
        bot_process(slack, Path(tmp), args.workers) as (url, bot),
    ):
        # Signed up front, and sent with the standard library's keep-alive client: the load
        # generator shares the two cores with the bot, and httpx in 50 threads cost about
        # as much CPU per request as the bot's whole ack.
        requests = [signed(slack, slash_command(f"add task {i}")) for i in range(args.commands)]
        address = urlsplit(url)
        local = threading.local()

        def one(request: tuple[bytes, dict[str, str]]) -> float:
            body, headers = request
            if not hasattr(local, "http"):
                local.http = http.client.HTTPConnection(address.hostname, address.port)
            started = time.perf_counter()
            local.http.request("POST", address.path, body=body, headers=headers)
            answer = local.http.getresponse()
            text = answer.read()
            elapsed = time.perf_counter() - started
            if answer.status != 200:
                raise SystemExit(f"HTTP {answer.status}: {text!r}")
            return elapsed

        cpu_before = cpu_seconds(bot.pid), cpu_seconds(bot.pid, children=False)
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = sorted(pool.map(one, requests))
        bot_cpu_ms = (cpu_seconds(bot.pid) - cpu_before[0]) / args.commands * 1000
        # The `nightcrew bot` process itself: the notifier posting each new task's card.
        notifier_cpu_ms = (
            (cpu_seconds(bot.pid, children=False) - cpu_before[1]) / args.commands * 1000
        )
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"ack latency, {args.commands} slash commands from {args.clients} clients, "
        f"{args.workers} server processes: "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms (goal: p99 <= 50 ms); "
        f"bot CPU {bot_cpu_ms:.2f} ms per command "
        f"(of which the notifier's process {notifier_cpu_ms:.2f} ms)"
    )
    with tempfile.TemporaryDirectory() as tmp, SlackEmulator() as slack:
        engine, app = app_for(slack, Path(tmp))
        calls, _ = run_whole_task(slack, engine, app)
    print(
        f"Web API calls for one 30-turn task: {len(calls)} (goal: 12 or fewer): " + ", ".join(calls)
    )


if __name__ == "__main__":
    main()
