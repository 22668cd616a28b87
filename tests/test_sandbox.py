"""The Docker sandbox against the real engine: what a command sees and cannot do, and that
timeouts, fork bombs, memory hogs and cancellation are contained and reported."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from executor.agents.external import run_external
from executor.agents.loop import NeedsHuman
from executor.config.schema import Limits
from executor.sandbox.container import (
    HOST_GRACE_S,
    LABEL,
    LABEL_EXECUTOR,
    ExecResult,
    Sandbox,
    SandboxError,
)
from executor.sandbox.container import remove_orphans as remove_orphans_of
from executor.sandbox.execution import parse_counters
from executor.sandbox.image import build_image, ensure_image
from storage.models import Task
from tests.conftest import git
from tests.docker_fixtures import running_in
from tests.waiting import wait_for

MakeSandbox = Callable[..., Sandbox]


@pytest.fixture(scope="module")
def shared(
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_executor: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sandbox]:
    """One sandbox for the checks that leave nothing behind."""
    workspace = tmp_path_factory.mktemp("shared")
    with Sandbox.start(
        docker_client,
        task_id="shared",
        executor_id=test_executor,
        workspace=workspace,
        image=sandbox_image,
        limits=Limits(memory="256m", pids=128),
    ) as sandbox:
        yield sandbox


def run(sandbox: Sandbox, command: str, timeout_s: float = 20) -> ExecResult:
    return sandbox.exec(command, timeout_s=timeout_s)


def test_output_and_exit_codes(shared: Sandbox) -> None:
    result = run(shared, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.timed_out, result.killed_reason) == (3, False, None)
    assert sorted(result.output.splitlines()) == ["err", "out"]
    assert run(shared, "pwd").output == "/workspace\n"
    assert shared.exec("pwd", timeout_s=5, workdir="/tmp").output == "/tmp\n"
    assert run(shared, "[[ -n bash ]] && printf '%s' \"$0\"").output == "bash"
    assert run(shared, "true").ok


def test_output_is_capped_head_and_tail(shared: Sandbox) -> None:
    result = run(shared, "echo first; yes | head -c 5000000; echo; echo last")
    assert result.exit_code == 0
    assert len(result.output) < 1_100_000
    assert result.output.startswith("first\n")
    assert result.output.endswith("last\n")
    assert "bytes of output cut" in result.output


def test_timeout_returns_within_seconds_and_kills_the_tree(shared: Sandbox) -> None:
    result = run(shared, "sleep 300 & sleep 301", timeout_s=1)
    assert result.timed_out
    assert result.duration_s < 4
    assert result.killed_reason == "timed out after 1 s"
    assert "sleep 30" not in run(shared, "ps -eo args").output


def test_background_processes_do_not_outlive_their_command(shared: Sandbox) -> None:
    assert run(shared, "sleep 302 & echo started").output == "started\n"
    assert "sleep 302" not in run(shared, "ps -eo args").output


def test_a_spawned_agents_tools_keep_their_own_sessions_between_polls(
    make_sandbox: MakeSandbox,
) -> None:
    """An external agent (spawned) may run a tool's command in a session of its own, as
    Codex does on a pseudo-terminal: the commands that poll the agent must not kill it (a
    tool's command died with code 137 mid-run under load). A process that left the agent's
    tree (a double fork, adopted by PID 1) is still ended by the next command."""
    sandbox = make_sandbox()
    agent = (
        "setsid sleep 300 & echo $! > /tmp/tool; "  # the tool's command, a new session
        "(setsid sleep 301 &) ; "  # a double fork: its parent exits, PID 1 adopts it
        "sleep 302"  # the agent itself, still running
    )
    assert sandbox.spawn(agent).ok and sandbox.agent_session is not None

    def alive(pattern: str) -> bool:
        return sandbox.exec(f"pgrep -f '^sleep {pattern}$' >/dev/null").ok

    wait_for(lambda: sandbox.exec("test -s /tmp/tool").ok, 10, "the tool's command")
    for _ in range(3):  # polls, as `_follow` makes them
        assert sandbox.exec("true").ok
    assert alive("300"), "the agent's tool was killed by a poll"
    assert alive("302")
    assert not alive("301"), "a process that left the agent's tree survived"
    sandbox.release_session()  # the agent is done: the next command ends all of it
    sandbox.exec("true")
    assert not alive("300") and not alive("302")


def test_a_spawned_agents_new_processes_survive_a_poll_that_races_their_fork(
    make_sandbox: MakeSandbox,
) -> None:
    """A process the agent forks while a poll's cleanup runs (after the cleanup listed the
    agent's tree, before it killed what was outside it) is the agent's too: killing it made
    `git add && git commit` in an external agent exit 137 under load."""
    sandbox = make_sandbox()
    agent = (
        "end=$(( $(date +%s) + 6 )); "
        "while [ $(date +%s) -lt $end ]; do "
        "sh -c 'exit 0' || echo \"killed $?\" >> /tmp/deaths; "
        "setsid sh -c 'exit 0' || echo \"killed $? (own session)\" >> /tmp/deaths; "
        "done; echo over > /tmp/over; sleep 300"
    )
    assert sandbox.spawn(agent).ok and sandbox.agent_session is not None
    polls = 0
    while not sandbox.exec("test -e /tmp/over").ok:  # polls, as `_follow` makes them
        polls += 1
    deaths = sandbox.exec("cat /tmp/deaths 2>/dev/null").output
    assert polls >= 2 and deaths == "", f"{polls} polls; {deaths}"


def test_quick_external_agents_are_read_by_their_exit_status(make_sandbox: MakeSandbox) -> None:
    """An agent that ends at once, polled as it starts and as it ends: each run is read by
    its own exit status, never as "died without an exit status" (a poll that came before
    the agent's shell had written its pid, or between its exit file and its end, said so)."""
    sandbox = make_sandbox()
    task = Task(id=7, repo="app", prompt="quick", requester="U1")
    seen: list[tuple[str, dict[str, object]]] = []
    record = lambda _id, kind, payload: seen.append((kind, payload))  # noqa: E731
    for _ in range(10):
        summary = run_external(sandbox, "echo ok", task, Limits(), lambda: None, record, shown="x")
        assert summary == "ok"
    with pytest.raises(NeedsHuman, match="exited with code 3"):
        run_external(sandbox, "exit 3", task, Limits(), lambda: None, record, shown="x")


def test_network_is_unreachable(shared: Sandbox) -> None:
    assert run(shared, "ls /sys/class/net").output.split() == ["lo"]
    connect = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    result = run(shared, f'python3 -c "{connect}"')
    assert result.exit_code != 0
    assert "Network is unreachable" in result.output
    assert run(shared, "getent hosts deb.debian.org").exit_code != 0


def test_network_when_the_repo_opts_in(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(network=True)
    assert "eth0" in run(sandbox, "ls /sys/class/net").output.split()


def test_no_host_secret_in_the_environment(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-host-key")
    sandbox = make_sandbox(env={"TASK_HINT": "given"})
    seen = run(sandbox, "env; cat /proc/1/environ | tr '\\0' '\\n'").output
    assert "sk-secret-host-key" not in seen
    assert "OPENAI_API_KEY" not in seen
    assert "TASK_HINT=given" in seen


def test_unprivileged_without_capabilities(shared: Sandbox) -> None:
    assert run(shared, "id -u").output.strip() != "0"
    status = dict(
        line.split(":\t", 1) for line in run(shared, "cat /proc/self/status").output.splitlines()
    )
    assert status["CapEff"].strip() == status["CapBnd"].strip() == "0" * 16
    assert status["NoNewPrivs"].strip() == "1"
    assert run(shared, "chown $(id -u) /etc/hostname").exit_code != 0
    assert "must be superuser" in run(shared, "mount -t tmpfs none /tmp").output


def test_writes_only_to_workspace_tmp_and_home(shared: Sandbox) -> None:
    for path in ["/etc/x", "/usr/x", "/x", "/var/tmp/x"]:
        result = run(shared, f"touch {path}")
        assert result.exit_code != 0, path
        assert "Read-only file system" in result.output, path
    for path in ["/tmp/x", "/workspace/x", "$HOME/x"]:
        assert run(shared, f"touch {path} && rm {path}").ok, path


def test_read_only_root_can_be_turned_off(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(read_only_root=False)
    assert run(sandbox, "touch /var/tmp/x && touch $HOME/x").ok
    assert "Permission denied" in run(sandbox, "touch /etc/x").output  # still not root


def test_host_reads_and_commits_what_the_sandbox_writes(
    make_sandbox: MakeSandbox, git_repo: Path
) -> None:
    sandbox = make_sandbox(workspace=git_repo)
    write = run(sandbox, "mkdir -p src && echo 'print(1)' > src/new.py && git status --short")
    assert write.ok, write.output
    assert write.output == "?? src/\n"
    assert (git_repo / "src" / "new.py").read_text() == "print(1)\n"
    # As root the host hands the tree to the sandbox user, and git then wants to be told.
    trust = ["-c", f"safe.directory={git_repo}"] if os.geteuid() == 0 else []
    git(git_repo, *trust, "add", ".")
    git(git_repo, *trust, "commit", "-q", "-m", "from the sandbox")
    assert git(git_repo, *trust, "show", "--stat", "--format=%s") == (
        "from the sandbox\n\n src/new.py | 1 +\n 1 file changed, 1 insertion(+)"
    )
    assert run(sandbox, "git log --format=%s -1").output == "from the sandbox\n"


def test_fork_bomb_is_contained_and_reported(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(limits=Limits(pids=64, memory="256m"))
    result = run(sandbox, ":(){ :|:& };: ; sleep 30", timeout_s=3)
    assert result.killed_reason is not None
    assert "process limit reached (pids 64)" in result.killed_reason
    assert result.duration_s < 8
    after = run(sandbox, "echo alive; ps -e --no-headers | wc -l")
    assert after.ok
    assert after.output.split()[0] == "alive"
    assert int(after.output.split()[1]) < 10
    started = time.monotonic()
    sandbox.remove()
    assert time.monotonic() - started < 5


def test_memory_hog_is_killed_and_reported(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(limits=Limits(memory="128m"))
    result = run(sandbox, "python3 -c 'b = bytearray(1 << 30); print(len(b))'")
    assert result.exit_code == 137
    assert not result.timed_out
    assert result.killed_reason == "out of memory (limit 128m)"
    assert run(sandbox, "echo alive").output == "alive\n"
    assert run(sandbox, "exit 1").killed_reason is None  # reported once, not forever


def test_without_timeout_in_the_image_the_host_enforces_the_deadline(
    make_sandbox: MakeSandbox, docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    builder = docker_client.containers.run(
        sandbox_image, ["rm", "/usr/bin/timeout"], user="0", detach=True
    )
    builder.wait()
    image = builder.commit("nightcrew-sandbox-test", "no-timeout")
    builder.remove()
    try:
        sandbox = make_sandbox(image=image.id)
        result = run(sandbox, "sleep 100", timeout_s=1)
        assert result.timed_out
        assert result.killed_reason == "timed out after 1 s; the sandbox was restarted to stop it"
        assert result.duration_s < 1 + HOST_GRACE_S + 3
        assert run(sandbox, "echo alive").output == "alive\n"
    finally:
        for sandbox_container in docker_client.containers.list(
            all=True, filters={"ancestor": image.id}, ignore_removed=True
        ):
            sandbox_container.remove(force=True)
        docker_client.images.remove(image.id, force=True)


def test_the_agent_cannot_stop_its_sandbox(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    sandbox.container.reload()
    started_at = sandbox.container.attrs["State"]["StartedAt"]
    run(sandbox, "kill -9 -1; pkill sleep")
    assert "sleep infinity" in run(sandbox, "ps -eo args").output
    sandbox.container.reload()
    assert sandbox.container.attrs["State"]["StartedAt"] == started_at  # never restarted


def test_a_stopped_sandbox_is_reported_and_started_again(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    run(sandbox, "echo kept > /workspace/f; echo lost > /tmp/f")
    results: list[ExecResult] = []
    worker = threading.Thread(target=lambda: results.append(run(sandbox, "sleep 30")))
    worker.start()
    wait_for(lambda: running_in([sandbox.container], "sleep 30"), message="the command to run")
    sandbox.container.kill()  # as the OOM killer taking PID 1 would, not a cancellation
    worker.join(10)
    assert results[0].killed_reason is not None
    assert results[0].killed_reason.startswith("sandbox stopped")
    after = run(sandbox, "cat /workspace/f; ls /tmp")
    assert (after.exit_code, after.output) == (0, "kept\n")


def test_frozen_pauses_everything_inside_and_retries_a_pause_that_fails(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox()
    with sandbox.frozen():
        sandbox.container.reload()
        assert sandbox.container.status == "paused"  # nothing in it can race the copy
    sandbox.container.reload()
    assert sandbox.container.status == "running"
    # A pause the engine refuses at first (here: the container is stopped, a 409) is tried
    # again: started again before the next try, that one freezes it.
    real_pause, tries = sandbox.container.pause, []

    def refused_once() -> None:
        tries.append(1)
        if len(tries) == 1:
            sandbox.container.stop(timeout=0)
            try:
                real_pause()  # the engine's own refusal
            finally:
                sandbox.container.start()
        real_pause()

    sandbox.container.pause = refused_once  # type: ignore[method-assign]
    with sandbox.frozen():
        sandbox.container.reload()
        assert sandbox.container.status == "paused"
    assert len(tries) == 2
    sandbox.container.pause = real_pause  # type: ignore[method-assign]
    # One that keeps failing is an error, as before.
    sandbox.container.stop(timeout=0)
    with pytest.raises(docker.errors.APIError), sandbox.frozen():
        pytest.fail("frozen() yielded without a pause")


def test_kill_during_a_long_command(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    results: list[ExecResult] = []
    worker = threading.Thread(target=lambda: results.append(run(sandbox, "sleep 600", 700)))
    worker.start()
    wait_for(lambda: running_in([sandbox.container], "sleep 600"), message="the command to run")
    started = time.monotonic()
    sandbox.kill()
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert results[0].killed_reason == "sandbox killed"
    sandbox.container.reload()
    assert sandbox.container.status != "running"
    assert run(sandbox, "true").killed_reason == "sandbox killed"


def test_remove_orphans_removes_only_the_executors_sandboxes(
    docker_client: docker.DockerClient, sandbox_image: str, test_executor: str, tmp_path: Path
) -> None:
    def start(executor_id: str, task_id: str) -> Sandbox:
        return Sandbox.start(
            docker_client,
            task_id=task_id,
            executor_id=executor_id,
            workspace=tmp_path,
            image=sandbox_image,
        )

    crashed, other = f"{test_executor}-crashed", f"{test_executor}-other"
    left = [start(crashed, "1"), start(crashed, "2")]
    kept = start(other, "3")
    stranger = docker_client.containers.create(sandbox_image, ["sleep", "1"], labels={"x": "y"})
    try:
        assert sorted(remove_orphans_of(docker_client, executor_id=crashed)) == sorted(
            s.name for s in left
        )
        mine = docker_client.containers.list(
            all=True, filters={"label": LABEL}, ignore_removed=True
        )
        assert kept.name in [c.name for c in mine]
        assert not [c for c in mine if c.labels.get(LABEL_EXECUTOR) == crashed]
        stranger.reload()  # still there
    finally:
        kept.remove()
        stranger.remove(force=True)


def test_missing_image_is_a_clear_error(
    docker_client: docker.DockerClient, test_executor: str, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError, match=r"build-image\.sh"):
        Sandbox.start(
            docker_client,
            task_id="x",
            executor_id=test_executor,
            workspace=tmp_path,
            image="nightcrew-missing:never",
        )
    with pytest.raises(SandboxError, match="cannot pull"):
        ensure_image(docker_client, "nightcrew-test.invalid/missing:never")
    (tmp_path / "Dockerfile").write_text("FROM nightcrew-test.invalid/base:never\n")
    with pytest.raises(SandboxError, match=r"build-image\.sh"):
        build_image(docker_client, "nightcrew-test:never", context=tmp_path)


def test_ensure_image_keeps_an_existing_image(
    docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    before = docker_client.images.get(sandbox_image).id
    ensure_image(docker_client, sandbox_image)
    assert docker_client.images.get(sandbox_image).id == before


def test_counters_are_read_from_cgroup_v1_and_v2() -> None:
    v1 = "counters\nmemory.oom_control under_oom 0\nmemory.oom_control oom_kill 2\n"
    v2 = "counters\nmemory.events max 9\nmemory.events oom_kill 1\npids.events max 3\n"
    assert parse_counters(v1 + "pids.events max 5\n") == {"oom": 2, "pids": 5}
    assert parse_counters(v2) == {"oom": 1, "pids": 3}  # memory's "max" is not the PID limit
    assert parse_counters("counters\n") == {"oom": 0, "pids": 0}  # no such cgroup files
    assert parse_counters("OCI runtime exec failed: resource temporarily unavailable") is None
