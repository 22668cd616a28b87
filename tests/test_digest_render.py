"""The digest as Block Kit, pure: a day of tasks in every state, overflow, the empty day.
Checked against the Block Kit limits Slack enforces (the emulator's checker)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.slack import blocks
from bot.slack.digest import MAX_AWAITING, render
from storage.digests import DigestData, DigestTask, Totals, riskiest_first
from storage.lifecycle import State
from tests.slack_emulator.blocks import check_blocks

SINCE = datetime(2026, 3, 28, 7, tzinfo=UTC)
UNTIL = datetime(2026, 3, 29, 6, tzinfo=UTC)  # DST began in between: 08:00 Berlin both days
BERLIN = ZoneInfo("Europe/Berlin")


def task(tid: int, state: State, prompt: str = "fix it", **kw: object) -> DigestTask:
    fields: dict = {"reason": None, "requester": "U111", "repo": "api"}
    fields.update(kw)
    return DigestTask(id=tid, state=state, prompt=prompt, **fields)


def proof(level: str, *, passed: bool = True) -> dict:
    return {
        "files": ["app.py", "test_app.py"],
        "insertions": 12,
        "deletions": 3,
        "checks": [{"command": "pytest", "passed": passed}, {"command": "ruff", "passed": True}],
        "review": {"verdict": "approve", "summary": "fine"},
        "risk": {"level": level, "reasons": ["checks failing"] if not passed else []},
    }


def texts(found: list[dict]) -> str:
    out = []
    for block in found:
        if "text" in block:
            out.append(block["text"]["text"])
        out += [e.get("text", "") for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
    return "\n".join(out)


def test_a_day_in_every_state() -> None:
    awaiting = riskiest_first(
        [
            task(1, State.AWAITING_APPROVAL, "add caching", proof=proof("low")),
            task(
                2,
                State.AWAITING_APPROVAL,
                "rewrite auth <!channel>",
                proof=proof("high", passed=False),
            ),
            task(3, State.AWAITING_APPROVAL, "rename a flag", proof=None),
        ]
    )
    data = DigestData(
        SINCE,
        UNTIL,
        awaiting=awaiting,
        merged=[task(4, State.MERGED, "bump deps")],
        failed=[task(5, State.FAILED, "port to rust", reason="checks failed 3 times")],
        open=[task(6, State.RUNNING, "refactor db"), task(7, State.QUEUED, "write docs")],
        totals=Totals(tasks=7, turns=123, tokens=456_789, cost_nanos=12_500_000_000),
    )
    text, found = render(data, tz=BERLIN)
    check_blocks(found)
    assert text == "nightcrew digest: 3 awaiting approval, 1 merged, 1 failed, 2 still open"
    body = texts(found)
    assert "Sat 28 Mar 08:00 (Europe/Berlin), until Sun 29 Mar 08:00" in body
    # Riskiest first, each with its proof summary and the card's own Approve/Reject buttons.
    order = [int(m) for m in re.findall(r"^\*(\d+)\* `api`", body, re.M)[:3]]
    assert order == [2, 3, 1]
    assert "risk *high* (checks failing) · checks 1/2 passed · review: approve" in body
    assert "no proof pack recorded" in body
    assert "&lt;!channel&gt;" in body and "<!channel>" not in body  # agents' text is escaped
    actions = [b for b in found if b["type"] == "actions"]
    assert [[e["action_id"] for e in a["elements"]] for a in actions] == [
        [blocks.APPROVE, blocks.REJECT, blocks.DIFFSTAT]
    ] * 3
    assert [a["elements"][0]["value"] for a in actions] == ["2", "3", "1"]
    assert "*4* `api` bump deps" in body
    assert "*5* `api` port to rust — checks failed 3 times" in body
    assert "_running_ refactor db" in body and "_queued_ write docs" in body
    assert "*Totals:* 7 tasks · 123 turns · 456,789 tokens · $12.50" in body


def test_overflow_is_summarized_within_slacks_limits() -> None:
    long = "make the thing work " * 50
    awaiting = [task(i, State.AWAITING_APPROVAL, long, proof=proof("low")) for i in range(1, 401)]
    merged = [task(i, State.MERGED, long) for i in range(1000, 4000)]
    failed = [task(i, State.FAILED, long, reason="x" * 5000) for i in range(5000, 5100)]
    running = [task(i, State.RUNNING, long) for i in range(6000, 6300)]
    data = DigestData(SINCE, UNTIL, awaiting, merged, failed, running, Totals(tasks=3800))
    _, found = render(data, tz=BERLIN)
    check_blocks(found)  # 50 blocks, 3,000 characters per section, unique block ids
    assert len(found) <= blocks.MAX_BLOCKS
    body = texts(found)
    assert len([b for b in found if b["type"] == "actions"]) == MAX_AWAITING
    assert f"… and {400 - MAX_AWAITING} more awaiting approval" in body
    for heading, total in (("Merged", 3000), ("Failed", 100), ("Running", 300)):
        (section,) = [
            b["text"]["text"] for b in found if heading in b.get("text", {}).get("text", "")
        ]
        shown = section.count("\n• ")
        more = int(re.search(r"… and ([\d,]+) more", section).group(1).replace(",", ""))
        assert shown >= 1 and shown + more == total, heading  # every task shown or counted


def test_the_empty_day_is_one_line() -> None:
    text, found = render(DigestData(SINCE, UNTIL), tz=BERLIN)
    assert len(found) == 1 and "\n" not in found[0]["text"]["text"]
    assert text == found[0]["text"]["text"]
    assert "nothing happened since Sat 28 Mar 08:00 (Europe/Berlin)" in text


def test_only_totals_is_not_an_empty_day() -> None:
    # A task that was cancelled in the window counts in the totals, so the day was not empty.
    _, found = render(DigestData(SINCE, UNTIL, totals=Totals(tasks=1, turns=3)), tz=BERLIN)
    assert "3 turns" in texts(found) and len(found) > 1


def test_windows_print_in_the_configured_zone() -> None:
    data = DigestData(SINCE, SINCE + timedelta(days=1), merged=[task(1, State.MERGED)])
    body = texts(render(data, tz=ZoneInfo("America/New_York"))[1])
    assert "Sat 28 Mar 03:00 (America/New_York), until Sun 29 Mar 03:00" in body
