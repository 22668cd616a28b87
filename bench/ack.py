"""Slash-command ack latency in HTTP mode under concurrent clients, and Web API calls per task.

    uv run python bench/ack.py [--clients 50] [--commands 500]

Runs the real Bolt app against the local Slack emulator (real HTTP, signed requests) on a
fresh SQLite database. Goals: ack p99 at most 50 ms; 12 or fewer Web API calls for a
30-turn task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

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


async def _client(address: SplitResult, queue: list[bytes], latencies: list[float]) -> None:
    """One keep-alive connection sending requests back to back until the queue is empty."""
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    while queue:
        request = queue.pop()
        started = time.perf_counter()
        writer.write(request)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if b" 200 " not in status:
            raise SystemExit(f"{status!r}: {body!r}")
    writer.close()


async def _send_all(
    address: SplitResult, requests: list[tuple[bytes, dict[str, str]]], clients: int
) -> list[float]:
    queue = [_http(address, body, headers) for body, headers in requests]
    latencies: list[float] = []
    await asyncio.gather(*(_client(address, queue, latencies) for _ in range(clients)))
    return sorted(latencies)


def _http(address: SplitResult, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {address.path} HTTP/1.1\r\nHost: {address.hostname}\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


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
        # Signed up front and sent from one event loop over raw keep-alive connections: the
        # load generator shares the two cores with the bot; 50 client threads (http.client,
        # httpx) cost as much CPU per request as the ack itself and their GIL waits showed
        # up as ack latency.
        address = urlsplit(url)
        warm_up = [signed(slack, slash_command(f"add warm-up {i}")) for i in range(100)]
        asyncio.run(_send_all(address, warm_up, args.clients))  # first-request imports
        requests = [signed(slack, slash_command(f"add task {i}")) for i in range(args.commands)]
        cpu_before = cpu_seconds(bot.pid), cpu_seconds(bot.pid, children=False)
        latencies = asyncio.run(_send_all(address, requests, args.clients))
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
