"""The egress allowlist (`network: [host:port, model]`): from inside a real sandbox a hostile
agent tries every way out; only the allowed endpoint answers, through nightcrew's proxy, and
each refusal lands in the task log and on the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot.slack.blocks import card
from executor.config.schema import RepoConfig
from executor.sandbox.egress import PROXY_URL
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply
from tests.worker_fixtures import RunWorker, add_task, task

# Runs inside the sandbox as the agent: each attempt prints one JSON line.
PROBE = r"""
import json, os, socket, sys, urllib.request
base, port = sys.argv[1], int(sys.argv[2])
def attempt(name, fn):
    try:
        print(json.dumps({"name": name, "ok": True, "detail": str(fn())[:300]}))
    except Exception as exc:
        print(json.dumps({"name": name, "ok": False, "detail": repr(exc)[:300]}))
def post(url):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))["choices"][0]["message"]["content"]
attempt("allowed", lambda: post(base + "/chat/completions"))
attempt("other_port", lambda: post(f"http://127.0.0.1:{port + 1}/v1/chat/completions"))
get = urllib.request.urlopen
attempt("other_host", lambda: get("http://example.com/", timeout=10).status)
attempt("https_other_host", lambda: get("https://example.com/", timeout=10).status)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
attempt("direct", lambda: opener.open(base + "/models", timeout=5).status)
attempt("raw_ip", lambda: socket.create_connection(("192.0.2.1", 443), timeout=5))
attempt("dns", lambda: socket.getaddrinfo("example.com", 443))
"""


def test_a_sandbox_with_an_allowlist_reaches_only_the_allowed_endpoint(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    (project / "probe.py").write_text(PROBE)
    git(project, "add", "probe.py")
    git(project, "commit", "-qm", "probe")
    task_id = add_task(engine, "probe the network")
    with ScriptedLLM([reply(content="the model answered")]) as llm:
        port = int(llm.base_url.rsplit(":", 1)[1].split("/")[0])
        command = f"python3 probe.py {llm.base_url} {port} > probe.jsonl 2>&1"
        options = {"agent": "command", "agent_command": command, "network": ["model"]}
        make_worker(llm, repo_options=options).work(drain=True)
        assert len(llm.requests) == 1, "the allowed request reached the model, once"
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    lines = git(project, "show", f"{done.branch}:probe.jsonl").splitlines()
    results = {r["name"]: r for r in map(json.loads, lines)}
    assert results["allowed"] == {"name": "allowed", "ok": True, "detail": "the model answered"}
    for name in ("other_port", "other_host", "https_other_host", "direct", "raw_ip", "dns"):
        assert results[name]["ok"] is False, results[name]
    assert "403" in results["other_port"]["detail"]
    with transaction(engine) as s:
        refused = [e.payload for e in events(s, task_id) if e.kind == "egress_refused"]
    assert sorted((r["host"], r["port"], r["count"]) for r in refused) == [
        ("127.0.0.1", port + 1, 1),
        ("example.com", 80, 1),
        ("example.com", 443, 1),
    ]
    assert done.egress_refused == 3
    _, blocks = card(done)
    assert any("3 connection(s) refused" in str(b) for b in blocks)


def test_every_command_of_an_allowlisted_sandbox_is_pointed_at_the_proxy(make_sandbox) -> None:
    sandbox = make_sandbox(egress=("pypi.org:443",))
    out = sandbox.exec("echo $HTTPS_PROXY $http_proxy; cat /proc/net/dev | tail -n +3").output
    first, *interfaces = out.splitlines()
    assert first == f"{PROXY_URL} {PROXY_URL}"
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"], "no way out but lo"


def test_the_proxy_survives_a_restart_of_the_sandbox(make_sandbox) -> None:
    sandbox = make_sandbox(egress=("example.com:80",))
    assert sandbox.exec("sleep 30", timeout_s=1).timed_out  # the host restarts the container
    probe = (
        "python3 -c \"import urllib.request as u\ntry: u.urlopen('http://nope.test/')\n"
        'except Exception as e: print(e)"'
    )
    assert "403" in sandbox.exec(probe).output
    assert sandbox.egress is not None
    assert sandbox.egress.take_refusals() == [{"host": "nope.test", "port": 80, "count": 1}]


@pytest.mark.parametrize(
    "network",
    [["api.openai.com"], ["api.openai.com:0"], ["a b:80"], ["http://x:80"], "yes", [["x:1"]]],
)
def test_a_network_value_that_is_no_allowlist_is_refused(network: object) -> None:
    with pytest.raises(ValueError, match="network"):
        RepoConfig(path=Path("/x"), network=network)


def test_an_allowlist_is_lower_case_and_keeps_the_model_shortcut() -> None:
    repo = RepoConfig(path=Path("/x"), network=["API.openai.com:443", "model", "[::1]:8000"])
    assert repo.network == ("api.openai.com:443", "model", "[::1]:8000")
    assert RepoConfig(path=Path("/x"), network=True).network is True


# Raw requests a hostile agent writes to the proxy itself, to slip past the allowlist.
SMUGGLE = r"""
import socket, sys
allowed = sys.argv[1]
tricks = {
    "userinfo": f"GET http://{allowed}@example.com/ HTTP/1.1\r\nHost: {allowed}\r\n\r\n",
    "trailing_dot": f"CONNECT {allowed.replace(':', '.:')} HTTP/1.1\r\n\r\n",
    "no_port": "CONNECT example.com HTTP/1.1\r\n\r\n",
    "origin_form": f"GET / HTTP/1.1\r\nHost: {allowed}\r\n\r\n",
    "https_absolute": f"GET https://{allowed}/ HTTP/1.1\r\n\r\n",
    "garbage": "\x00\x01\x02 hello\r\n\r\n",
    "huge_head": "GET http://" + "a" * 70000 + "/ HTTP/1.1\r\n\r\n",
}
for name, raw in tricks.items():
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    try:
        s.sendall(raw.encode("latin-1"))
    except OSError:
        pass
    try:
        answer = s.recv(200).decode("latin-1").split("\r\n")[0]
    except OSError as exc:
        answer = repr(exc)
    print(name, "=>", answer or "(closed)")
"""


def test_requests_smuggled_past_the_allowlist_are_refused(make_sandbox) -> None:
    with ScriptedLLM([]) as llm:
        allowed = llm.base_url.split("/")[2]
        sandbox = make_sandbox(egress=(allowed,))
        sandbox.exec(f"cat > /tmp/smuggle.py <<'EOF'\n{SMUGGLE}\nEOF")
        out = sandbox.exec(f"python3 /tmp/smuggle.py {allowed}").output
        assert llm.requests == [], "nothing reached the allowed server"
    answers = dict(line.split(" => ", 1) for line in out.splitlines() if " => " in line)
    assert answers["userinfo"].startswith("HTTP/1.1 403"), out
    assert answers["trailing_dot"].startswith("HTTP/1.1 403"), out
    for name in ("no_port", "origin_form", "https_absolute", "garbage"):
        assert answers[name].startswith("HTTP/1.1 400"), out
    assert answers["huge_head"] in ("(closed)",) or "Connection reset" in answers["huge_head"]
    assert sandbox.egress is not None
    hosts = {r["host"] for r in sandbox.egress.take_refusals()}
    assert "example.com" in hosts
