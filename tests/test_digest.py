"""The digest against real databases with a frozen clock: what goes in it, when it is sent,
once per target and fire time whatever the restarts and the number of bot processes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.scheduler import Scheduler, Tick
from bot.slack import digest_send as digest
from executor.config import crontime
from storage import digests
from storage.db import make_engine, transaction
from storage.digests import collect
from storage.lifecycle import State
from storage.models import Charge, DigestRun, Outbox
from storage.plans import request_plan
from storage.spend import charge, charge_planner
from tests.digest_fixtures import config, posts, put_task
from tests.waiting import wait_for

# 08:00 in Berlin: 07:00 UTC in winter; DST starts on 29 March 2026, so 06:00 UTC from then.
DAY1 = datetime(2026, 3, 25, 7, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def spend(
    s: Session,
    task_id: int,
    at: datetime,
    *,
    cost: int | None,
    tokens_in: int = 0,
    tokens_out: int = 0,
) -> None:
    s.add(
        Charge(
            task_id=task_id,
            repo="api",
            model="m",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_nanos=cost,
            at=at,
        )
    )


@dataclass
class CountingScheduler(Scheduler):
    """The real scheduler, counting its finished ticks: the sign that it looked and found
    nothing more to do."""

    ticks: int = 0

    def tick(self) -> Tick:
        done = super().tick()
        self.ticks += 1
        return done


def post_text(row: Outbox) -> str:
    return row.payload["text"] + "\n" + str(row.payload["blocks"])


def test_collect_sorts_a_day_of_tasks_in_every_state(engine: Engine) -> None:
    hour = timedelta(hours=1)
    with transaction(engine) as s:
        low = put_task(s, State.AWAITING_APPROVAL, DAY1 - hour * 30, risk="low", turns=5)
        high = put_task(s, State.AWAITING_APPROVAL, DAY1 + hour, risk="high")
        usd_1_50 = 1_500_000_000  # nano-dollars
        merged = put_task(s, State.MERGED, DAY1 + hour * 2, turns=10)
        old = put_task(s, State.MERGED, DAY1 - hour, turns=99)  # before the window
        failed = put_task(s, State.FAILED, DAY1 + hour * 3, reason="checks failed")
        running = put_task(s, State.RUNNING, DAY1 - hour * 48)  # open: listed however old
        queued = put_task(s, State.QUEUED, DAY1 + hour * 4, prompt="x" * 5000)
        asking = put_task(s, State.NEEDS_INPUT, DAY1 + hour * 5, requester="U222", turns=2)
        cancelled = put_task(s, State.CANCELLED, DAY1 + hour * 6, turns=1)
        put_task(s, State.REJECTED, DAY1 - hour * 2)
        late = put_task(s, State.MERGED, DAY2 + hour)  # after the window
        # What was spent, by the ledger: only calls made inside the window count, whoever's
        # task it is and whenever the task last changed (the running one spent in it too).
        spend(s, old, DAY1 - hour, tokens_in=7000, cost=usd_1_50)  # the day before
        spend(s, merged, DAY1 + hour * 2, tokens_in=1000, cost=usd_1_50)
        spend(s, running, DAY1 + hour * 7, tokens_in=300, cost=250_000_000)
        spend(s, asking, DAY1 + hour * 5, tokens_in=20, cost=10_000_000)
        spend(s, cancelled, DAY1 + hour * 6, tokens_out=50, cost=None)  # a model without a price
        spend(s, late, DAY2 + hour, tokens_in=9, cost=9)
    with transaction(engine) as s:
        data = collect(s, DAY1, DAY2)
        mine = collect(s, DAY1, DAY2, requester="U222")
    assert [t.id for t in data.awaiting] == [high, low]  # riskiest first
    assert data.awaiting[0].proof is not None and data.awaiting[0].risk == "high"
    assert [t.id for t in data.merged] == [merged] and old not in [t.id for t in data.merged]
    assert [(t.id, t.reason) for t in data.failed] == [(failed, "checks failed")]
    assert [t.id for t in data.open] == [running, queued, asking]
    assert len(data.open[1].prompt) == digests.PROMPT_CHARS
    # Totals: the tasks changed in the window (high, merged, failed, queued, asking, cancelled)
    # with their turns; tokens and cost spent in the window.
    assert data.totals == digests.Totals(
        tasks=6, turns=13, tokens=1370, cost_nanos=1_760_000_000, unpriced_tokens=50
    )
    assert (mine.totals.tokens, mine.totals.cost_nanos) == (20, 10_000_000)  # U222's only
    assert [t.id for t in mine.open] == [asking] and not mine.awaiting and not mine.merged


def test_sent_once_per_channel_at_its_time_covering_the_day_since_the_last(
    engine: Engine, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    with transaction(engine) as s:
        put_task(s, State.MERGED, DAY1 + timedelta(hours=3), prompt="bump deps")
    assert digest.send_due(engine, cfg, DAY2 - timedelta(seconds=1)) == []  # fresh install
    sent = digest.send_due(engine, cfg, DAY2 + timedelta(seconds=1))
    assert [(one.target, one.fire_at) for one in sent] == [("C111", DAY2), ("C222", DAY2)]
    assert sent[0].data.since == DAY1  # the previous fire time: no digest was sent before
    assert digest.send_due(engine, cfg, DAY2 + timedelta(minutes=5)) == []
    rows = posts(engine)
    assert [r.payload["channel"] for r in rows] == ["C111", "C222"]
    assert "1 merged" in rows[0].payload["text"] and "bump deps" in post_text(rows[0])
    # The next day covers the day since this one; an empty day says so in one line.
    (third, _) = digest.send_due(engine, cfg, DAY2 + timedelta(days=1, seconds=5))
    assert third.data.since == DAY2
    row = posts(engine)[2]
    assert len(row.payload["blocks"]) == 1 and "nothing happened since" in row.payload["text"]


def test_a_restart_after_missed_digests_sends_the_latest_once(
    engine: Engine, tmp_path: Path
) -> None:
    cfg = config(tmp_path, channels=("C111",))
    digest.send_due(engine, cfg, DAY1)  # sent on day 1, then the bot was down three days
    with transaction(engine) as s:
        put_task(s, State.MERGED, DAY1 + timedelta(days=1), prompt="merged while down")
    day4 = DAY1 + timedelta(days=3)
    restart = day4 + timedelta(hours=2, minutes=17)
    (sent,) = Scheduler(engine, lambda: cfg, clock=lambda: restart).tick().digests
    assert (sent.fire_at, sent.data.since) == (day4, DAY1)  # one digest, covering all of it
    assert [t.prompt for t in sent.data.merged] == ["merged while down"]
    again = Scheduler(engine, lambda: cfg, clock=lambda: restart + timedelta(hours=1))
    assert again.tick().digests == []
    assert len(posts(engine)) == 2


def test_the_fire_time_follows_the_zone_across_the_dst_change(
    engine: Engine, tmp_path: Path
) -> None:
    cfg = config(tmp_path, channels=("C111",))
    before = datetime(2026, 3, 28, 7, tzinfo=UTC)  # Saturday 08:00 CET
    after = datetime(2026, 3, 29, 6, tzinfo=UTC)  # Sunday 08:00 CEST: 23 hours later
    assert [s.fire_at for s in digest.send_due(engine, cfg, before)] == [before]
    with transaction(engine) as s:
        put_task(s, State.MERGED, before + timedelta(hours=5))
    assert digest.send_due(engine, cfg, after - timedelta(seconds=1)) == []
    (sent,) = digest.send_due(engine, cfg, after)
    assert (sent.fire_at, sent.data.since) == (after, before)
    assert digest.send_due(engine, cfg, before + timedelta(days=1)) == []  # 07:00 UTC: no
    assert "Sat 28 Mar 08:00 (Europe/Berlin), until Sun 29 Mar 08:00" in post_text(posts(engine)[1])


def test_subscribers_get_their_own_tasks_by_dm(engine: Engine, tmp_path: Path) -> None:
    cfg = config(tmp_path, channels=())
    with transaction(engine) as s:
        put_task(s, State.FAILED, DAY1 + timedelta(hours=1), prompt="mine", reason="boom")
        put_task(s, State.FAILED, DAY1 + timedelta(hours=1), prompt="theirs", requester="U222")
        assert digests.subscribe(s, "U111") and not digests.subscribe(s, "U111")
    sent = digest.send_due(engine, cfg, DAY2)
    assert [one.target for one in sent] == ["U111"]
    assert [t.prompt for t in sent[0].data.failed] == ["mine"]
    assert posts(engine)[0].payload["text"].startswith("Your nightcrew digest")
    with transaction(engine) as s:
        assert digests.unsubscribe(s, "U111") and not digests.unsubscribe(s, "U111")
    assert digest.send_due(engine, cfg, DAY2 + timedelta(days=1)) == []


def test_a_persons_digest_counts_the_planning_of_their_plans(
    engine: Engine, tmp_path: Path
) -> None:
    # A planner run's calls name its plan and no task: the DM digest of the person who asked
    # for the plan counts them, as the channel digest and the budgets do.
    hour = timedelta(hours=1)
    usd_1 = 1_000_000_000
    with transaction(engine) as s:
        theirs = request_plan(s, repo="api", spec="split the parser", requester="U222")
        mine = request_plan(s, repo="api", spec="bump deps", requester="U111")
        task = put_task(s, State.RUNNING, DAY1 + hour, requester="U222")
        charge(s, task, model="m", tokens_in=10, tokens_out=0, cost_nanos=usd_1, at=DAY1 + hour)
        for plan, tokens, cost in ((theirs, 200, usd_1 * 2), (mine, 3000, usd_1 * 4)):
            charge_planner(
                s, repo="api", plan_id=plan.id, model="m", tokens_in=tokens, tokens_out=0,
                cost_nanos=cost, at=DAY1 + hour * 2,
            )  # fmt: skip
        charge_planner(  # a re-plan, priceless, and a run that made no plan (nobody's)
            s, repo="api", plan_id=theirs.id, model="x", tokens_in=0, tokens_out=7,
            cost_nanos=None, at=DAY1 + hour * 3,
        )  # fmt: skip
        charge_planner(
            s, repo="api", plan_id=None, model="m", tokens_in=1, tokens_out=0,
            cost_nanos=usd_1 * 8, at=DAY1 + hour * 3,
        )  # fmt: skip
        assert digests.subscribe(s, "U111") and digests.subscribe(s, "U222")
    with transaction(engine) as s:
        everyone = collect(s, DAY1, DAY2)
        theirs_seen = collect(s, DAY1, DAY2, requester="U222")
        mine_seen = collect(s, DAY1, DAY2, requester="U111")
    assert (everyone.totals.tokens, everyone.totals.cost_nanos) == (3218, usd_1 * 15)
    assert theirs_seen.totals.tokens == 217 and theirs_seen.totals.unpriced_tokens == 7
    assert theirs_seen.totals.cost_nanos == usd_1 * 3  # their task's call and their plan's
    # U111 has no task at all: planning alone is worth a digest, and it says what it cost.
    assert (mine_seen.totals.tokens, mine_seen.totals.cost_nanos) == (3000, usd_1 * 4)
    assert not mine_seen.empty
    sent = digest.send_due(engine, config(tmp_path, channels=()), DAY2)
    assert [one.target for one in sent] == ["U111", "U222"]
    text = str(posts(engine)[0].payload["blocks"])
    assert "nothing happened" not in text and "3,000 tokens" in text and "$4.00" in text


def test_two_schedulers_on_one_database_send_each_digest_once(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    digest.send_due(engine, cfg, DAY1)
    engines = [make_engine(db_url) for _ in range(2)]
    now = DAY2 + timedelta(seconds=2)
    start = threading.Barrier(len(engines))
    sent: list[digest.Sent] = []
    errors: list[BaseException] = []

    def process(own: Engine) -> None:
        scheduler = Scheduler(own, lambda: cfg, clock=lambda: now)
        start.wait()
        try:
            for _ in range(5):
                sent.extend(scheduler.tick().digests)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=process, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert errors == []
    assert sorted(s.target for s in sent) == ["C111", "C222"]
    assert sorted(r.payload["channel"] for r in posts(engine)) == ["C111", "C111", "C222", "C222"]
    with transaction(engine) as session:
        runs = session.exec(select(DigestRun.target, DigestRun.fire_at)).all()
    assert sorted(runs) == [("C111", DAY1), ("C111", DAY2), ("C222", DAY1), ("C222", DAY2)]


def test_the_running_scheduler_catches_up_at_start_once(engine: Engine, tmp_path: Path) -> None:
    """APScheduler itself, on the real clock: the catch-up job sends the missed digest at
    start; a second start (a restart) sends nothing more."""
    # Daily, twelve hours from now: the missed fire is long past and the next far off, so no
    # real fire time can pass while the test runs (a fixed 08:00 did, at 08:00).
    twelve = datetime.now(UTC) + timedelta(hours=12)
    cron_text = f"{twelve.minute} {twelve.hour} * * *"
    cfg = config(tmp_path, cron=cron_text, timezone="UTC", channels=("C111",))
    cron = crontime.trigger(cfg.digest.cron, cfg.digest.timezone)
    missed = crontime.latest_fire(cron, datetime.now(UTC))
    assert missed is not None
    with transaction(engine) as s:
        assert digests.claim_run(s, "C111", missed - timedelta(days=2))
    with CountingScheduler(engine, lambda: cfg, poll_s=0.2) as first:
        wait_for(lambda: posts(engine), 10, "the catch-up digest")
        seen = first.ticks
        wait_for(lambda: first.ticks >= seen + 2, 10, "two more polls")  # still one after
    with CountingScheduler(engine, lambda: cfg, poll_s=0.2) as restarted:
        wait_for(lambda: restarted.ticks >= 2, 10, "the restart's catch-up and a poll")
    (row,) = posts(engine)
    assert row.payload["channel"] == "C111"
    with transaction(engine) as s:
        assert digests.last_run(s, "C111") == missed


@pytest.mark.parametrize("requester", [None, "U111"])
def test_on_demand_covers_since_the_last_digest_and_records_nothing(
    engine: Engine, tmp_path: Path, requester: str | None
) -> None:
    cfg = config(tmp_path)
    digest.send_due(engine, cfg, DAY1)
    with transaction(engine) as s:
        put_task(s, State.AWAITING_APPROVAL, DAY1 + timedelta(hours=2), risk="medium")
        data, text, found = digest.on_demand(s, cfg, DAY1 + timedelta(hours=3), requester=requester)
    assert data.since == DAY1  # the channels' last digest; a subscriber's own, else the cron's
    assert "1 awaiting approval" in text and len(found) > 1
    assert len(posts(engine)) == 2  # the two scheduled ones; on demand posts nothing
