"""Server time to render one task page: a 5,000-line diff and 300 turns.

    uv run python bench/page.py [--lines 5000] [--turns 300] [--runs 15]

Fills a fresh SQLite database with one task awaiting approval (a Python diff of `--lines`
changed lines over 25 files, `--turns` turn events with tool calls and output, checks, a
review, a proof pack) and times the WSGI app answering its signed link, from the request to
the last byte of the body (database reads, diff parsing, Pygments, Jinja2). The first run is
reported apart: "cold" is a diff nobody highlighted yet, in a server that has started (its
warmer compiled the templates and loaded the lexers at start, timed apart): the
page highlights its first ~200 lines and sends the rest plain, then fetches each plain
file's highlighted rows (`/t/<id>/file/<n>`), timed apart ("fragments"); "warmed" is the
first view of a diff the server's warmer highlighted when it was recorded (bot/web/app.py
`Warmer`: what a person opening a parked task's link usually gets). Between them, another
diff nobody highlighted. Goal: under 300 ms."""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.links import Signer
from bot.web import pages
from bot.web.app import Warmer, web_app
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Task, TaskEvent

FILES = 25


def _source() -> list[str]:
    """Real code to highlight: nightcrew's own modules (Pygments' cost depends on the code)."""
    root = Path(__file__).resolve().parent.parent
    lines: list[str] = []
    for path in sorted((root / "executor").rglob("*.py")):
        lines += path.read_text().splitlines()
    return lines


def make_diff(lines: int) -> str:
    source = _source()
    out, per = [], max(1, lines // FILES)
    for f in range(FILES):
        out += [
            f"diff --git a/src/mod{f}.py b/src/mod{f}.py",
            "index 1111111..2222222 100644",
            f"--- a/src/mod{f}.py",
            f"+++ b/src/mod{f}.py",
            f"@@ -1,{per // 2 + 3} +1,{per - per // 2 + 3} @@",
            " import os",
        ]
        for i in range(per):
            sign = "+" if i % 2 else "-"
            out.append(sign + source[(f * per + i) % len(source)])
        out.append(" # end")
    return "\n".join(out) + "\n"


def fill(engine: object, *, lines: int, turns: int) -> int:
    with transaction(engine) as s:  # type: ignore[arg-type]
        task = Task(
            repo="api",
            prompt="Add pagination to every list endpoint",
            requester="U0BENCH",
            branch="nightcrew/1-pagination",
            state=State.AWAITING_APPROVAL,
            turns=turns,
        )
        s.add(task)
        s.flush()
        assert task.id is not None
        for n in range(1, turns + 1):
            call = {
                "tool": "run_command",
                "arguments": '{"command": "pytest -q tests/test_api.py"}',
                "output": "....F..\n" * 40,
            }
            payload = {"turn": n, "content": "Looking at the handlers. " * 8, "calls": [call]}
            s.add(TaskEvent(task_id=task.id, kind="turn", payload=payload))
        check = {
            "command": "pytest -q",
            "exit_code": 0,
            "duration_s": 3.2,
            "output_tail": "ok\n" * 500,
            "killed_reason": None,
            "passed": True,
        }
        files = [f"src/mod{f}.py" for f in range(FILES)]
        s.add(
            TaskEvent(
                task_id=task.id,
                kind="diff",
                payload={"commit": "a" * 40, "diff": make_diff(lines), "cut": 0},
            )
        )
        review = {
            "verdict": "approve",
            "summary": "fine",
            "findings": [{"file": "src/mod3.py", "line": 5, "message": "naming"}],
        }
        proof = {
            "commit": "a" * 40,
            "files": files,
            "insertions": lines // 2,
            "deletions": lines // 2,
            "checks": [check],
            "review": review,
            "rounds": 1,
            "risk": {"level": "high", "reasons": [f"{lines} lines changed"]},
            "diff_stat": "",
        }
        s.add(TaskEvent(task_id=task.id, kind="proof", payload=proof))
        return task.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(sqlite_url(Path(tmp)))
        signer = Signer(b"b" * 64)
        app = web_app(engine, signer)
        warmer = Warmer(engine)
        start = time.perf_counter()
        pages.prepare()  # as the server's warmer does when it starts
        prepared = (time.perf_counter() - start) * 1000
        cold_task = fill(engine, lines=args.lines, turns=args.turns)
        warmer.tick()  # from here on, new diffs are highlighted as they are recorded
        warm_task = fill(engine, lines=args.lines, turns=args.turns)
        warmer.tick()
        later_task = fill(engine, lines=args.lines, turns=args.turns)  # the warmer missed it

        def get(task_id: int, suffix: str = "", extra: str = "") -> tuple[float, bytes]:
            path, _, query = signer.task_url(task_id, "U0BENCH").partition("?")
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": path.removeprefix(signer.base) + suffix,
                "QUERY_STRING": query + extra,
            }
            status: list[str] = []
            start = time.perf_counter()
            body = b"".join(app(environ, lambda s, h: status.append(s)))
            took = (time.perf_counter() - start) * 1000
            assert status == ["200 OK"], status
            return took, body

        cold, body = get(cold_task)
        pending = re.findall(rb'data-hl="(\d+)"', body)
        event = re.search(rb"var q = .*?, d = (\d+);", body)
        fragments = [
            get(cold_task, f"/file/{n.decode()}", f"&d={event[1].decode()}")[0]
            for n in pending
            if event
        ]
        later, _ = get(later_task)
        first, _ = get(warm_task)
        again = [get(warm_task)[0] for _ in range(args.runs)]
        shown = (
            f"{len(fragments)} files highlighted after it, max {max(fragments):.0f} ms, "
            f"{sum(fragments):.0f} ms in all"
            if fragments
            else "every file highlighted inline"
        )
        print(
            f"task page, {args.lines:,}-line diff, {args.turns} turns ({len(body) / 1e6:.1f} MB):"
            f" cold {cold:.0f} ms ({shown}); another unhighlighted diff {later:.0f} ms;"
            f" warmed: first view {first:.0f} ms, then median "
            f"{statistics.median(again):.0f} ms, max {max(again):.0f} ms over {args.runs} "
            f"runs (goal < 300 ms); server start-up preparation {prepared:.0f} ms"
        )


if __name__ == "__main__":
    main()
