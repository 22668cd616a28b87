"""The outage decisions, pure: the backoff and who may ask a failing endpoint next. Fast: no
clock, no threads, no sockets (the gate and the client are tested over HTTP in test_llm)."""

from __future__ import annotations

import math

from executor.agents.outage import Admit, Backoff, Outage

B = Backoff(first_s=1.0, max_s=60.0)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [B.delay(step) for step in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert B.delay(10_000) == 60  # no overflow after a long night


def test_jitter_takes_off_at_most_a_quarter() -> None:
    assert B.delay(3, jitter=0.0) == 8
    assert 6 < B.delay(3, jitter=0.999) <= 8
    assert B.delay(3, jitter=0.5) == 7


def test_retry_after_wins_when_longer_but_is_capped() -> None:
    assert B.delay(0, retry_after=5) == 5
    assert B.delay(4, retry_after=5) == 16  # the backoff is longer already
    assert B.delay(0, retry_after=3600) == 60


def test_probes_within_an_outage() -> None:
    # Probes at 1, 3, 7, 15, 31, 63 s: six fail inside 90 s, the seventh (123 s) succeeds.
    assert B.probes_within(90) == 6
    assert Backoff(1, 20).probes_within(90) == 7  # 1, 3, 7, 15, 31, 51, 71 (91 answers)
    assert B.probes_within(0.5) == 0


def test_a_healthy_endpoint_lets_everybody_send() -> None:
    o = Outage(B)
    assert [o.admit(now) for now in (0, 0, 0)] == [Admit.SEND] * 3


def test_the_first_failure_closes_the_gate_until_the_first_probe() -> None:
    o = Outage(B)
    o.failed(100, "HTTP 500: down", probe=False)
    assert o.failing and o.since == 100 and o.last == "HTTP 500: down"
    assert o.admit(100.25) == 0.75  # wait, then ask again
    assert o.admit(101) is Admit.PROBE
    assert o.admit(101) == math.inf  # one probe at a time: the rest wait for its answer
    assert o.admit(150) == math.inf


def test_failed_probes_wait_longer_each_time() -> None:
    o = Outage(B)
    o.failed(0, "x", probe=False)
    at = 0.0
    waits = []
    for _ in range(5):
        at = o.next_probe_at
        assert o.admit(at) is Admit.PROBE
        o.failed(at, "x", probe=True)
        waits.append(o.next_probe_at - at)
    assert waits == [2, 4, 8, 16, 32]
    assert o.failures == 6


def test_requests_already_under_way_do_not_speed_up_the_backoff() -> None:
    """Three tasks' requests were in flight when the outage began: three failures, but one
    step; only probes count as steps."""
    o = Outage(B)
    for now in (0.0, 0.1, 0.2):
        o.failed(now, "x", probe=False)
    assert (o.step, o.next_probe_at, o.since) == (0, 1.0, 0.0)
    o.failed(0.3, "x", probe=False, retry_after=30)  # but a longer Retry-After is honoured
    assert o.next_probe_at == 30.3


def test_any_answer_opens_the_gate_for_everybody() -> None:
    o = Outage(B)
    o.failed(0, "x", probe=False)
    assert o.admit(1) is Admit.PROBE
    o.answered()
    assert not o.failing and o.step == 0 and o.failures == 0
    assert [o.admit(1) for _ in range(3)] == [Admit.SEND] * 3


def test_an_abandoned_probe_hands_the_turn_to_the_next_caller() -> None:
    o = Outage(B)
    o.failed(0, "x", probe=False)
    assert o.admit(1) is Admit.PROBE
    o.abandoned(probe=False)  # not the probe: changes nothing
    assert o.admit(1) == math.inf
    o.abandoned(probe=True)
    assert o.admit(1) is Admit.PROBE
    assert o.step == 0  # no answer is not a failure


def test_after_recovery_a_new_outage_starts_from_the_first_wait() -> None:
    o = Outage(B)
    o.failed(0, "x", probe=False)
    for _ in range(4):
        o.admit(o.next_probe_at)
        o.failed(o.next_probe_at, "x", probe=True)
    o.answered()
    o.failed(500, "y", probe=False)
    assert o.next_probe_at == 501 and o.since == 500
