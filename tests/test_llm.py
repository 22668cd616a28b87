"""The LLM client against the scripted OpenAI-compatible server, over real HTTP."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from executor.agents.llm import LLMClient, LLMRejected, LLMUnavailable, Usage, parse_retry_after
from tests.llm_server import (
    Fault,
    ScriptedLLM,
    drop,
    error,
    hang,
    rate_limited,
    reply,
    slow,
    stall,
    stream_error,
    tool_call,
    trickle,
)

USER = [{"role": "user", "content": "list the files"}]
BASH = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command in the workspace.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
}
both = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
Connect = Callable[..., LLMClient]


@pytest.fixture
def stream() -> bool:
    return False


@pytest.fixture
def connect(stream: bool) -> Iterator[Connect]:
    """Clients for a scripted server; fast backoff so retries cost milliseconds."""
    clients: list[LLMClient] = []

    def make(llm: ScriptedLLM, **options: Any) -> LLMClient:
        defaults = {"api_key": "sk-test", "model": "test-model", "timeout": 2.0, "backoff": 0.01}
        client = LLMClient(base_url=llm.base_url, stream=stream, **{**defaults, **options})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@both
def test_content_reply(connect: Connect) -> None:
    with ScriptedLLM([reply(content="All files listed, nothing to do.", usage=(42, 7))]) as llm:
        got = connect(llm).complete(USER)
    assert got.content == "All files listed, nothing to do."
    assert got.tool_calls == []
    assert got.finish_reason == "stop"
    assert got.usage == Usage(prompt_tokens=42, completion_tokens=7)


@both
def test_tool_calls_with_null_content(connect: Connect) -> None:
    calls = [
        tool_call("bash", {"command": "ls -la src/ && git status --short"}, id="call_a"),
        tool_call("read_file", {"path": "src/app.py", "start": 1, "end": 80}, id="call_b"),
    ]
    with ScriptedLLM([reply(*calls), reply(content="done")]) as llm:
        client = connect(llm)
        got = client.complete(USER, tools=[BASH])
        assert got.content is None  # `"content": null` on the wire
        assert got.finish_reason == "tool_calls"
        assert [(c.id, c.name, c.arguments, c.error) for c in got.tool_calls] == [
            ("call_a", "bash", {"command": "ls -la src/ && git status --short"}, None),
            ("call_b", "read_file", {"path": "src/app.py", "start": 1, "end": 80}, None),
        ]
        # The reply goes back into the conversation as the assistant turn.
        result = {"role": "tool", "tool_call_id": "call_a", "content": "app.py"}
        client.complete([*USER, got.as_message(), result], tools=[BASH])
    sent = llm.requests[1]["messages"][1]
    assert sent["role"] == "assistant"
    assert [c["id"] for c in sent["tool_calls"]] == ["call_a", "call_b"]
    assert json.loads(sent["tool_calls"][0]["function"]["arguments"]) == calls[0].arguments


@pytest.mark.parametrize("stream", [True], ids=["stream"])
def test_stream_assembles_arguments_split_across_chunks(connect: Connect) -> None:
    long = {"command": "grep -rn 'TODO' src/ | head -50", "timeout": 30, "cwd": "/workspace"}
    script = [reply(tool_call("bash", long), tool_call("bash", {"command": "pwd"}))]
    with ScriptedLLM(script * 2) as llm:
        # The server really does split and interleave the calls' argument deltas.
        body = {"model": "m", "messages": USER, "stream": True}
        raw = httpx.post(llm.base_url + "/chat/completions", json=body).text
        deltas = [
            call["index"]
            for line in raw.splitlines()
            if line.startswith("data: {")
            for choice in json.loads(line[6:])["choices"]
            for call in choice["delta"].get("tool_calls", [])
        ]
        assert deltas.count(0) >= 3 and deltas.count(1) >= 2
        assert deltas != sorted(deltas)
        got = connect(llm).complete(USER, tools=[BASH])
    assert [c.arguments for c in got.tool_calls] == [long, {"command": "pwd"}]


@both
def test_empty_reply_is_none_not_a_crash(connect: Connect) -> None:
    with ScriptedLLM([reply(content=None, usage=None, finish_reason="length")]) as llm:
        got = connect(llm).complete(USER)
    assert (got.content, got.tool_calls, got.usage) == (None, [], Usage(0, 0))
    assert got.finish_reason == "length"


@both
def test_tool_calls_without_id_and_with_object_arguments(connect: Connect) -> None:
    # llama.cpp and Ollama: no id, arguments as a JSON object instead of a string.
    calls = [
        tool_call("bash", {"command": "ls"}, id=None, as_object=True),
        tool_call("bash", {"command": "pwd"}, id=None),
    ]
    with ScriptedLLM([reply(*calls)]) as llm:
        got = connect(llm).complete(USER, tools=[BASH])
    assert [c.arguments for c in got.tool_calls] == [{"command": "ls"}, {"command": "pwd"}]
    ids = [c.id for c in got.tool_calls]
    assert all(ids) and len(set(ids)) == 2
    assert json.loads(got.tool_calls[0].raw_arguments) == {"command": "ls"}


@both
def test_malformed_arguments_come_back_as_an_error_not_an_exception(connect: Connect) -> None:
    calls = [
        tool_call("bash", '{"command": "ls', id="bad"),
        tool_call("bash", '["ls"]', id="list"),
        tool_call("bash", {"command": "ls"}, id="good"),
    ]
    with ScriptedLLM([reply(*calls)]) as llm:
        bad, listed, good = connect(llm).complete(USER, tools=[BASH]).tool_calls
    assert (bad.id, bad.arguments, bad.raw_arguments) == ("bad", None, '{"command": "ls')
    assert bad.error is not None and bad.error.startswith("arguments are not valid JSON:")
    assert listed.arguments is None
    assert listed.error == "arguments must be a JSON object, got list"
    assert (good.arguments, good.error) == ({"command": "ls"}, None)


@both
def test_usage_is_per_reply_and_sums(connect: Connect) -> None:
    with ScriptedLLM(
        [reply(content="a", usage=(100, 20)), reply(content="b", usage=(130, 9))]
    ) as llm:
        client = connect(llm)
        replies = [client.complete(USER), client.complete(USER)]
    total = sum((r.usage for r in replies), Usage())
    assert total == Usage(230, 29)
    assert total.total_tokens == 259


@both
def test_request_carries_model_messages_tools_and_tool_choice(
    connect: Connect, stream: bool
) -> None:
    choice = {"type": "function", "function": {"name": "bash"}}
    with ScriptedLLM([reply(content="ok"), reply(content="ok")]) as llm:
        client = connect(llm)
        client.complete(USER, tools=[BASH], tool_choice=choice, options={"temperature": 0})
        client.complete(USER)
    first, second = llm.requests
    assert first["model"] == "test-model"
    assert first["messages"] == USER
    assert first["tools"] == [BASH]
    assert first["tool_choice"] == choice
    assert first["temperature"] == 0
    assert "tools" not in second and "tool_choice" not in second  # OpenAI rejects it alone
    if stream:
        assert first["stream"] is True
        assert first["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in first


def test_api_key_is_sent_as_bearer_and_omitted_when_none(connect: Connect) -> None:
    with ScriptedLLM([reply(content="a"), reply(content="b")]) as llm:
        connect(llm, api_key="sk-secret").complete(USER)
        connect(llm, api_key=None).complete(USER)
    assert llm.headers[0]["authorization"] == "Bearer sk-secret"
    assert "authorization" not in llm.headers[1]


def test_429_waits_for_retry_after_seconds(connect: Connect) -> None:
    with ScriptedLLM([rate_limited(retry_after=1), reply(content="ok")]) as llm:
        start = time.monotonic()
        got = connect(llm).complete(USER)
        waited = time.monotonic() - start
    assert got.content == "ok"
    assert len(llm.requests) == 2
    assert 0.95 <= waited < 3


def test_429_waits_for_retry_after_http_date(connect: Connect) -> None:
    # HTTP dates have whole seconds: "now + 2 s" is between 1 and 2 s away.
    when = formatdate(time.time() + 2, usegmt=True)
    with ScriptedLLM([rate_limited(retry_after=when), reply(content="ok")]) as llm:
        start = time.monotonic()
        connect(llm).complete(USER)
        waited = time.monotonic() - start
    assert 0.9 <= waited < 3.5


def test_retry_after_is_capped(connect: Connect) -> None:
    with ScriptedLLM([rate_limited(retry_after=3600), reply(content="ok")]) as llm:
        start = time.monotonic()
        connect(llm, max_wait=0.2).complete(USER)
    assert time.monotonic() - start < 2


def test_parse_retry_after() -> None:
    now = 1_445_412_450.0  # 2015-10-21 07:27:30 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0  # in the past
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@both
@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_transient_statuses_recover(connect: Connect, status: int) -> None:
    with ScriptedLLM([error(status), error(status), reply(content="ok")]) as llm:
        assert connect(llm).complete(USER).content == "ok"
    assert len(llm.requests) == 3


def test_a_plain_request_that_hangs_is_cut_by_the_total_timeout(connect: Connect) -> None:
    with ScriptedLLM([hang(30), reply(content="ok")]) as llm:
        start = time.monotonic()
        got = connect(llm, timeout=0.5, idle_timeout=60).complete(USER)
        waited = time.monotonic() - start
    assert got.content == "ok"
    assert 0.45 <= waited < 3


def test_a_plain_reply_that_never_ends_is_cut_by_the_total_timeout(connect: Connect) -> None:
    """A body trickling in (a byte every 0.2 s) never trips a read timeout: the total does."""
    with ScriptedLLM([trickle(30), reply(content="ok")]) as llm:
        start = time.monotonic()
        got = connect(llm, timeout=1.0).complete(USER)
        waited = time.monotonic() - start
    assert got.content == "ok"
    assert 0.95 <= waited < 4


@pytest.mark.parametrize("stream", [True], ids=["stream"])
@pytest.mark.parametrize("step", [hang(30), stall(30)], ids=["no answer", "stops midway"])
def test_a_silent_stream_is_cut_by_the_idle_timeout(connect: Connect, step: Any) -> None:
    """Streamed, the total time is free (a long reply keeps coming) but silence is not."""
    with ScriptedLLM([step, reply(content="ok")]) as llm:
        start = time.monotonic()
        got = connect(llm, timeout=600, idle_timeout=0.5).complete(USER)
        waited = time.monotonic() - start
    assert got.content == "ok"
    assert 0.45 <= waited < 3


@pytest.mark.parametrize("stream", [True], ids=["stream"])
def test_a_stream_is_not_held_to_the_total_timeout(connect: Connect) -> None:
    """A reply slower than `timeout` but never silent for `idle_timeout` is not cut."""
    with ScriptedLLM([slow(0.2, reply(content="ok"))]) as llm:
        got = connect(llm, idle_timeout=0.5, timeout=0.1).complete(USER)
    assert got.content == "ok"
    assert len(llm.requests) == 1


@both
@pytest.mark.parametrize("midway", [False, True], ids=["before", "midway"])
def test_dropped_connection_recovers(connect: Connect, midway: bool) -> None:
    with ScriptedLLM([drop(midway=midway), reply(content="ok")]) as llm:
        assert connect(llm).complete(USER).content == "ok"
    assert len(llm.requests) == 2


@both
@pytest.mark.parametrize("as_event", [False, True], ids=["data", "event"])
def test_error_inside_a_200_is_retried(connect: Connect, as_event: bool) -> None:
    script = [stream_error("overloaded", as_event=as_event), reply(content="ok")]
    with ScriptedLLM(script) as llm:
        assert connect(llm).complete(USER).content == "ok"
    assert len(llm.requests) == 2


@pytest.mark.parametrize("stream", [True], ids=["stream"])
def test_server_ignoring_stream_true_still_parses(connect: Connect) -> None:
    message = {"role": "assistant", "content": "plain after all"}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    with ScriptedLLM([Fault(200, body=json.dumps(body))]) as llm:
        assert connect(llm).complete(USER).content == "plain after all"


def test_base_url_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        LLMClient(base_url="localhost:8080/v1", api_key=None, model="m")


DEEP = '{"a":' * 100_000 + "1" + "}" * 100_000  # deeper than Python's JSON decoder recurses


@both
def test_arguments_nested_too_deep_are_an_error_for_the_agent_not_a_crash(
    connect: Connect,
) -> None:
    """A hostile or broken model's arguments `{"a":{"a":…` 100,000 deep: json.loads raises
    RecursionError, which no `except ValueError` catches; the call must come back as bad
    arguments like any other malformed JSON."""
    with ScriptedLLM([reply(tool_call("bash", DEEP, id="deep"))]) as llm:
        (deep,) = connect(llm).complete(USER, tools=[BASH]).tool_calls
    assert deep.arguments is None
    assert deep.error == "arguments are not valid JSON: JSON nested too deeply"


def test_a_body_nested_too_deep_is_a_bad_reply_and_retried(connect: Connect) -> None:
    with ScriptedLLM([Fault(200, body=DEEP), reply(content="ok")]) as llm:
        assert connect(llm).complete(USER).content == "ok"
    assert len(llm.requests) == 2


def test_body_that_is_not_json_is_retried(connect: Connect) -> None:
    with ScriptedLLM([Fault(200, body="<html>gateway</html>"), reply(content="ok")]) as llm:
        assert connect(llm).complete(USER).content == "ok"


@both
def test_retries_exhausted_raise_unavailable_with_what_happened(connect: Connect) -> None:
    llm = ScriptedLLM([error(500, "model overloaded")] * 3)
    with llm, pytest.raises(LLMUnavailable) as caught:
        connect(llm, max_attempts=3).complete(USER)
    message = str(caught.value)
    assert llm.base_url + "/chat/completions" in message
    assert "HTTP 500 3 times" in message
    assert "model overloaded" in message
    assert len(llm.requests) == 3


def test_mixed_failures_are_all_named(connect: Connect) -> None:
    what = r"3 times \(HTTP 503, connection error, HTTP 429\)"
    llm = ScriptedLLM([error(503), drop(), rate_limited()])
    with llm, pytest.raises(LLMUnavailable, match=what):
        connect(llm, max_attempts=3).complete(USER)


def test_exhausted_script_fails_loudly(connect: Connect) -> None:
    with ScriptedLLM([reply(content="only one")]) as llm:
        client = connect(llm, max_attempts=2)
        client.complete(USER)
        with pytest.raises(LLMUnavailable, match="script exhausted"):
            client.complete(USER)


def test_unreachable_endpoint_is_unavailable(connect: Connect) -> None:
    llm = ScriptedLLM()
    llm.start().stop()  # a port nobody listens on any more
    with pytest.raises(LLMUnavailable, match="connection error 2 times"):
        connect(llm, max_attempts=2).complete(USER)


@both
@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_rejected_without_retry(connect: Connect, status: int) -> None:
    message = "This model's maximum context length is 8192 tokens"
    llm = ScriptedLLM([error(status, message), reply(content="never")])
    with llm, pytest.raises(LLMRejected) as caught:
        connect(llm).complete(USER)
    assert caught.value.status_code == status
    assert message in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert ("API key" in str(caught.value)) == (status == 401)
    assert len(llm.requests) == 1


def test_a_reply_of_the_wrong_shape_is_retried_not_a_crash(connect: Connect) -> None:
    wrong = {
        "choices": [
            {"message": {"role": "assistant", "tool_calls": [{"id": "c1", "function": "bash"}]}}
        ]
    }
    with ScriptedLLM([Fault(200, body=json.dumps(wrong)), reply(content="ok")]) as llm:
        assert connect(llm).complete(USER).content == "ok"
    unusable = pytest.raises(LLMUnavailable, match="unexpected reply shape")
    with ScriptedLLM([Fault(200, body=json.dumps(wrong))] * 2) as llm, unusable:
        connect(llm, max_attempts=2).complete(USER)


# --- outages: one probe at a time, the others wait; the window ends the wait --------------


class Heard:
    """A WaitListener that writes down what it was told; `stop_after` raises in `check`."""

    def __init__(self, stop_after: float | None = None) -> None:
        self.told: list[Any] = []
        self.ended: list[bool] = []
        self.checks = 0
        self.stop_after = stop_after
        self.started = time.monotonic()

    def waiting(self, wait: Any) -> None:
        self.told.append(wait)

    def check(self) -> None:
        self.checks += 1
        if self.stop_after is not None and time.monotonic() - self.started > self.stop_after:
            raise KeyboardInterrupt("cancelled")

    def over(self, answered: bool) -> None:
        self.ended.append(answered)


def test_an_outage_is_probed_one_request_at_a_time_and_all_resume(connect: Connect) -> None:
    """Six threads share one client (as an executor's workers do) through a 4 s outage:
    after the first failures only one request at a time reaches the endpoint, each after
    the backoff's wait; when one succeeds, every call carries on and none failed."""
    calls, outage = 6, 4.0
    with ScriptedLLM([reply(content="ok")] * calls) as llm:
        client = connect(llm, backoff=0.2, max_wait=1.0)
        llm.fail_for(outage)
        start = time.time()
        with ThreadPoolExecutor(calls) as pool:
            replies = list(pool.map(lambda _: client.complete(USER), range(calls)))
    assert [r.content for r in replies] == ["ok"] * calls
    assert all(r.waited_s > 0 for r in replies)
    times = sorted(at - start for at, _ in llm.failed_requests)
    probes = client.backoff.probes_within(outage, jitter=0.999)
    # Each call's first request may fail before it sees the outage; after that, probes only.
    assert len(times) <= calls + probes, times
    later = times[calls:]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert all(gap >= 0.15 for gap in gaps), f"more than one probe at once: {times}"
    assert len(llm.requests) == calls  # then each call once, all answered


def test_without_a_shared_client_each_caller_probes_alone(connect: Connect) -> None:
    """The yardstick for the test above: separate clients (separate gates) each probe."""
    calls, outage = 6, 4.0
    with ScriptedLLM([reply(content="ok")] * calls) as llm:
        clients = [connect(llm, backoff=0.2, max_wait=1.0) for _ in range(calls)]
        llm.fail_for(outage)
        with ThreadPoolExecutor(calls) as pool:
            list(pool.map(lambda c: c.complete(USER), clients))
    shared_at_most = calls + clients[0].backoff.probes_within(outage, jitter=0.999)
    assert len(llm.failed_requests) > shared_at_most


def test_a_call_waits_out_an_outage_then_says_so_to_its_listener(connect: Connect) -> None:
    heard = Heard()
    with ScriptedLLM([reply(content="ok")]) as llm:
        llm.fail_for(3.0)
        got = connect(llm, backoff=0.2, max_wait=0.5).complete(USER, waiting=heard)
    assert got.content == "ok" and got.waited_s >= 2.5
    assert len(heard.told) == 1  # once, not per probe
    (wait,) = heard.told
    assert wait.failure.startswith("HTTP 500: scripted outage")
    assert (wait.until - wait.since).total_seconds() == 30 * 60  # the default window
    assert heard.ended == [True]
    assert heard.checks >= 2  # a cancel is looked for while it waits


def test_a_blip_is_not_news(connect: Connect) -> None:
    heard = Heard()
    with ScriptedLLM([error(503), reply(content="ok")]) as llm:
        connect(llm).complete(USER, waiting=heard)
    assert heard.told == [] and heard.ended == []


def test_the_window_ends_the_wait_with_a_clear_error(connect: Connect) -> None:
    heard = Heard()
    with ScriptedLLM() as llm:
        llm.fail_for(60)
        client = connect(llm, backoff=0.2, max_wait=0.5, outage_window=3)
        start = time.monotonic()
        with pytest.raises(LLMUnavailable) as caught:
            client.complete(USER, waiting=heard)
        took = time.monotonic() - start
    message = str(caught.value)
    assert "kept failing for 3 s (outage window 3 s)" in message, message
    assert "HTTP 500" in message and "scripted outage" in message
    assert 2.9 <= took < 5
    assert heard.ended == [False]


def test_a_caller_that_stops_waiting_leaves_the_gate_to_the_others(connect: Connect) -> None:
    """A cancel raised from the listener ends that call at once; another caller still
    gets its answer when the endpoint is back."""
    with ScriptedLLM([reply(content="ok")]) as llm:
        client = connect(llm, backoff=0.2, max_wait=0.5)
        llm.fail_for(4.0)
        with ThreadPoolExecutor(2) as pool:
            stopped = pool.submit(client.complete, USER, waiting=Heard(stop_after=1.0))
            other = pool.submit(client.complete, USER)
            with pytest.raises(KeyboardInterrupt):
                stopped.result(timeout=10)
            assert other.result(timeout=20).content == "ok"


def test_window_zero_gives_up_at_the_first_failure(connect: Connect) -> None:
    llm = ScriptedLLM([error(500, "down"), reply(content="never")])
    with llm, pytest.raises(LLMUnavailable, match="HTTP 500 1 times"):
        connect(llm, outage_window=0).complete(USER)
    assert len(llm.requests) == 1


def test_a_refusal_during_an_outage_opens_the_gate(connect: Connect) -> None:
    """A 4xx is the endpoint answering: the callers waiting behind it go at once."""
    with ScriptedLLM([error(503), error(400, "too long"), reply(content="ok")]) as llm:
        client = connect(llm, backoff=0.5, max_wait=0.5)
        with pytest.raises(LLMRejected):
            client.complete(USER)
        start = time.monotonic()
        assert client.complete(USER).content == "ok"
        assert time.monotonic() - start < 0.3
