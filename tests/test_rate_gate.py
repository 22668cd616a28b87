"""The per-method rate-limit gate (pure logic with the clock): what a storm costs."""

from __future__ import annotations

import time

from slack_sdk import WebClient

from bot.slack.rate_gate import PROBE_WAIT_S, RateGate, gate_for, method_name
from tests.slack_emulator import Call
from tests.test_slack_storms import _too_early


def test_a_429_holds_every_caller_then_one_probe_goes_first() -> None:
    gate = RateGate()
    assert gate.enter("chat.update") == (0.0, False)  # never limited: no probe needed
    gate.leave("chat.update", probe=False, limited_s=0.2, ok=False)
    wait, probe = gate.enter("chat.update")
    assert 0.1 < wait <= 0.2 and not probe
    assert gate.enter("chat.postMessage") == (0.0, False)  # other methods are not held
    time.sleep(wait)
    assert gate.enter("chat.update") == (0.0, True)  # the probe
    assert gate.enter("chat.update") == (PROBE_WAIT_S, False)  # the rest wait for its answer
    gate.leave("chat.update", probe=True, limited_s=None, ok=True)
    assert gate.enter("chat.update") == (0.0, False)  # open for everyone again


def test_a_probe_that_is_limited_again_closes_the_gate_again() -> None:
    gate = RateGate()
    gate.leave("chat.update", probe=False, limited_s=0.0, ok=False)
    assert gate.enter("chat.update") == (0.0, True)
    gate.leave("chat.update", probe=True, limited_s=3.0, ok=False)
    wait, probe = gate.enter("chat.update")
    assert 2.5 < wait <= 3.0 and not probe


def test_one_gate_per_workspace_and_slacks_method_names() -> None:
    assert gate_for("http://a/api/", "xoxb-1") is gate_for("http://a/api/", "xoxb-1")
    assert gate_for("http://a/api/", "xoxb-1") is not gate_for("http://a/api/", "xoxb-2")
    client = WebClient()
    assert method_name(client.chat_postMessage) == "chat.postMessage"
    assert method_name(client.files_getUploadURLExternal) == "files.getUploadURLExternal"


def test_the_storm_tests_check_catches_a_call_inside_retry_after() -> None:
    limited = Call("chat.update", {}, "t", 10.0, 429, "ratelimited", 2)
    assert _too_early([limited, Call("chat.update", {}, "t", 11.0, 200, None)])
    assert not _too_early([limited, Call("chat.update", {}, "t", 12.1, 200, None)])
    assert not _too_early([limited, Call("chat.postMessage", {}, "t", 11.0, 200, None)])
    assert not _too_early([limited, Call("chat.update", {}, "t", 10.1, 429, None)])  # in flight
