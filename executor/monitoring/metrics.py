"""Prometheus metrics: counters and histograms observed at the few I/O edges (model calls,
agent turns, task outcomes, Slack deliveries), and queue depth read from the database at
scrape time, so every process reports the same queue whoever changed it.

The instruments live in prometheus_client's default registry (one set per process);
`registry(engine)` adds the queue collector for one admin server."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import col, select

from storage.db import reading
from storage.lifecycle import State
from storage.models import Outbox, Task

# Model calls take from a fraction of a second (a cache hit) to minutes (a slow local model).
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A turn is a model call plus its tool calls (builds, test runs): up to the command timeout.
TURN_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Slack lag: under a second when idle; paced edits and backoff push it to minutes.
LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

TASKS_STARTED = Counter(
    "nightcrew_tasks_started", "Tasks an executor began working on.", ["kind"]
)  # kind: run | merge
TASKS_FINISHED = Counter(
    "nightcrew_tasks_finished", "Task runs that ended, by the state they ended in.", ["state"]
)
TASKS_FAILED = Counter("nightcrew_tasks_failed", "Task runs that ended in `failed`.")
TURN_SECONDS = Histogram(
    "nightcrew_agent_turn_seconds",
    "One agent turn: the model call and the tool calls it asked for.",
    buckets=TURN_BUCKETS,
)
LLM_SECONDS = Histogram(
    "nightcrew_llm_request_seconds",
    "One model request, retries included.",
    ["outcome"],  # ok | unavailable | rejected
    buckets=LLM_BUCKETS,
)
LLM_WAITING = Gauge(
    "nightcrew_llm_waiting_calls",
    "Model calls waiting for a failing endpoint (an outage) in this process.",
)
TOKENS = Counter("nightcrew_llm_tokens", "Tokens charged to tasks.", ["kind"])  # prompt|completion
COST = Counter("nightcrew_llm_cost_usd", "Model cost charged to tasks, in US dollars.")


def count_charge(tokens_in: int, tokens_out: int, usd: float | None) -> None:
    """One charge to the ledger (a task's turns, an external agent's run, a planner run)."""
    TOKENS.labels("prompt").inc(tokens_in)
    TOKENS.labels("completion").inc(tokens_out)
    COST.inc(usd or 0)


SLACK_LAG = Histogram(
    "nightcrew_slack_delivery_lag_seconds",
    "From an outbox row being written to Slack accepting it.",
    ["kind"],  # card | state | react
    buckets=LAG_BUCKETS,
)
SLACK_ERRORS = Counter(
    "nightcrew_slack_delivery_errors",
    "Failed Slack deliveries: transient ones are retried, permanent ones are not.",
    ["kind"],  # transient | permanent
)
SLACK_RATE_LIMITED = Counter(
    "nightcrew_slack_rate_limited",
    "429 answers from Slack, by Web API method: waited out (Retry-After), not failures.",
    ["method"],
)
SLACK_GIVEN_UP = Counter(
    "nightcrew_slack_deliveries_given_up",
    "Outbox rows the notifier gave up on: they will never reach Slack.",
    ["reason"],  # refused | attempts | too_old
)


class QueueCollector(Collector):
    """Tasks per state and undelivered outbox rows, counted when scraped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with reading(self.engine) as s:  # a scrape never waits for the write lock
            counts = dict(s.exec(select(Task.state, func.count()).group_by(Task.state)).all())
            pending = s.exec(
                select(func.count()).select_from(Outbox).where(col(Outbox.delivered_at).is_(None))
            ).one()
        tasks = GaugeMetricFamily("nightcrew_tasks", "Tasks in each state.", labels=["state"])
        for state in State:  # every state, zeros included: dashboards need stable series
            tasks.add_metric([state.value], counts.get(state, 0))
        yield tasks
        yield GaugeMetricFamily(
            "nightcrew_outbox_pending", "Slack messages not yet delivered.", value=pending
        )


class _Instruments(Collector):
    """The process-wide instruments, seen through another registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry(engine: Engine | None) -> CollectorRegistry:
    """What an admin server exposes: the instruments, and queue depth when it has a database."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Instruments())
    if engine is not None:
        reg.register(QueueCollector(engine))
    return reg
