"""The Docker sandbox the agent's tool calls run in: one long-lived container per task with
the task's workspace at /workspace, each command a fresh `docker exec` with a timeout.

Defaults are the design's security stance: no network, an unprivileged user, no capabilities,
no-new-privileges, memory/CPU/PID limits, a read-only root with tmpfs /tmp and home, and an
environment holding only what we pass. A sandbox with a folder of its own gets it as a
filesystem of `limits.disk` bytes, nosuid,nodev (executor/git/quota.py). No process of the
agent outlives its command (execution.WRAPPER), except a spawned external agent's session
until it is released. `agent_env` reaches only what `spawn` starts (the external agent),
never the container's environment, setup or checks.

Failures of a command come back as data (`ExecResult`); a sandbox that cannot start raises
`SandboxError`, and a command that used up the disk quota raises `DiskQuotaExceeded`: the task
fails with that reason, and the host's hand-back still has the reserved room."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from executor.config.schema import DEFAULT_IMAGE, Limits
from executor.git import quota
from executor.git.workspace import WorkspaceError
from executor.git.workspace import remove as remove_workspace
from executor.sandbox.egress import EgressError, EgressProxy, proxy_env
from executor.sandbox.execution import COUNTERS, NO_COUNTS, WRAPPER, CappedOutput, parse_counters

WORKSPACE = "/workspace"
HOME = "/home/agent"
LABEL = "nightcrew.sandbox"  # on every container we start; remove_orphans looks for it
LABEL_TASK = "nightcrew.task"
LABEL_EXECUTOR = "nightcrew.executor"
# On a sandbox whose workspace folder is its own (a warm one, executor/sandbox/warm.py):
# removing the container as an orphan removes that folder too.
LABEL_WORKSPACE = "nightcrew.workspace"

# When nightcrew runs as root the agent gets this uid (the image's `agent` user), never 0.
FALLBACK_UID = 1000
# The keepalive (PID 1 and its `sleep`) runs as another unprivileged uid, so the agent's
# `kill -9 -1` or `pkill sleep` cannot take the container down.
KEEPALIVE_UID = 65534
# Output kept per command (head and tail halves); `yes` must not eat the host's memory.
MAX_OUTPUT_BYTES = 1_000_000
# Past its timeout the command's own `timeout` should have ended it; this much later the host
# restarts the container. Covers the engine's 2 s wait for output of detached processes.
HOST_GRACE_S = 5.0
PAUSE_ATTEMPTS = 4  # a pause the runtime fails under load is tried again, then the error stands


class _Folder:
    """`quota.make_folder` in a thread of its own, so it overlaps the container's creation."""

    def __init__(self, workspace: Path, size: int) -> None:
        self.workspace = workspace
        self._limited = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._make, args=(size,), daemon=True)
        self._thread.start()

    def _make(self, size: int) -> None:
        try:
            self._limited = quota.make_folder(self.workspace, size)
        except OSError as exc:
            self._error = exc

    def made(self) -> bool:
        """Whether the folder has its own filesystem (a quota); raises what making it did."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._limited

    def discard(self) -> None:
        """The container was never made: the folder goes too."""
        self._thread.join()
        with contextlib.suppress(OSError):
            quota.release(self.workspace)
        with contextlib.suppress(OSError):
            self.workspace.rmdir()


class SandboxError(Exception):
    """The sandbox cannot be created or its image cannot be found or built."""


class DiskQuotaExceeded(Exception):
    """A command filled the task's workspace to its disk quota (`limits.disk`)."""


@dataclass
class ExecResult:
    exit_code: int  # -1 when there is none (the sandbox died or could not run the command)
    output: str  # stdout and stderr interleaved, middle cut past MAX_OUTPUT_BYTES
    timed_out: bool
    duration_s: float
    killed_reason: str | None = None  # "out of memory (limit 2g)", "timed out after 600 s", ...

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


@dataclass
class Sandbox:
    client: docker.DockerClient
    container: Container
    limits: Limits
    user: str  # uid:gid the commands run as
    workspace: Path  # the host folder mounted at /workspace
    _seen: dict[str, int] = field(default_factory=lambda: dict(NO_COUNTS))
    _killed: bool = False
    _starting: threading.Thread | None = None  # a start still under way (`background`)
    _start_error: SandboxError | None = None
    # Variables for the external agent's process only (`spawn`), never the container's.
    agent_env: dict[str, str] = field(default_factory=dict)
    # The session of a spawned external agent: it survives the commands in between.
    agent_session: int | None = None
    disk_limited: bool = False  # the workspace is a filesystem of limits.disk bytes
    disk_full: bool = False  # the quota was hit: later commands are the host's hand-back
    # With an allowlist (`network: [...]`): the proxy whose socket is the sandbox's only way
    # out (executor/sandbox/egress.py); placed again after every (re)start.
    egress: EgressProxy | None = None

    @classmethod
    def start(
        cls,
        client: docker.DockerClient,
        *,
        task_id: str,
        executor_id: str,
        workspace: Path,
        image: str = DEFAULT_IMAGE,
        limits: Limits | None = None,
        network: bool = False,
        read_only_root: bool = True,
        env: Mapping[str, str] | None = None,
        agent_env: Mapping[str, str] | None = None,
        own_workspace: bool = False,
        background: bool = False,
        egress: tuple[str, ...] | None = None,
        read_only_workspace: bool = False,
    ) -> Sandbox:
        """Create and start the task's container; `SandboxError` if the engine refuses.

        With `background` the start (the slow part) goes on while the caller prepares the
        workspace and asks the model; the first command waits for it, and raises the
        `SandboxError` if it failed.

        With `own_workspace` the folder `workspace` is made here, empty, once the container
        exists (so a sweep never finds the folder without its container), and is labelled on
        the container: remove_orphans removes both. Where the host can, it is a filesystem of
        `limits.disk` bytes (the disk quota). Nothing is handed over yet: the host fills the
        folder first, then calls prepare_workspace().

        `env` is the container's environment (every command sees it); `agent_env` only what
        `spawn` starts. `egress` (host:port pairs): no network but the allowlisting proxy,
        which every command is pointed at (`network` is then ignored). `read_only_workspace`
        mounts the workspace read-only (the planner: it looks, it never writes)."""
        limits = limits or Limits()
        workspace = workspace.resolve()
        if own_workspace:
            uid, gid = sandbox_ids(None)
        elif workspace.is_dir():
            uid, gid = prepare_workspace(workspace)
        else:
            raise SandboxError(f"workspace {workspace} is not a directory")
        keepalive = KEEPALIVE_UID if uid != KEEPALIVE_UID else KEEPALIVE_UID - 1
        size = f"size={limits.memory_bytes}"  # tmpfs pages count against the memory limit
        tmpfs = {HOME: f"rw,exec,nosuid,nodev,{size},uid={uid},gid={gid},mode=0700"}
        if read_only_root:
            tmpfs["/tmp"] = f"rw,exec,nosuid,nodev,{size},mode=1777"
        environment = {
            "HOME": HOME,
            "LANG": "C.UTF-8",
            # Git refuses a repo owned by another uid; the mount is the agent's to use.
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "safe.directory",
            "GIT_CONFIG_VALUE_0": "*",
            **(proxy_env() if egress is not None else {}),
            **(env or {}),
        }
        if egress is not None:
            network = False
        # The workspace's own filesystem (mkfs, mount: tens of ms) is made while the engine
        # creates the container; it must be mounted before the container starts.
        folder = _Folder(workspace, limits.disk_bytes) if own_workspace else None
        try:
            container = client.containers.create(
                image,
                ["sleep", "infinity"],
                name=f"nightcrew-{_slug(task_id)}-{secrets.token_hex(3)}",
                labels={
                    LABEL: "1",
                    LABEL_TASK: task_id,
                    LABEL_EXECUTOR: executor_id,
                    **({LABEL_WORKSPACE: str(workspace)} if own_workspace else {}),
                },
                hostname="sandbox",
                user=f"{keepalive}:{keepalive}",
                environment=environment,
                working_dir=WORKSPACE,
                volumes={
                    str(workspace): {
                        "bind": WORKSPACE,
                        "mode": "ro" if read_only_workspace else "rw",
                    }
                },
                init=True,  # docker-init as PID 1 reaps the zombies of detached processes
                network_mode="bridge" if network else "none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=read_only_root,
                tmpfs=tmpfs,
                mem_limit=limits.memory_bytes,
                memswap_limit=limits.memory_bytes,  # equal: no swap
                # Quota, not nano_cpus: the engine rejects nano_cpus above its core count.
                cpu_period=100_000,
                cpu_quota=int(limits.cpus * 100_000),
                pids_limit=limits.pids,
            )
        except ImageNotFound as exc:
            if folder is not None:
                folder.discard()
            raise SandboxError(
                f"sandbox image {image} is missing; call ensure_image() or, without a registry,"
                " run sandbox/build-image.sh"
            ) from exc
        except APIError as exc:
            if folder is not None:
                folder.discard()
            raise SandboxError(f"cannot create the sandbox: {exc.explanation or exc}") from exc
        limited = False
        if folder is not None:
            try:
                limited = folder.made()
            except OSError as exc:
                container.remove(force=True)
                raise SandboxError(f"cannot make the sandbox's workspace: {exc}") from exc
        sandbox = cls(client, container, limits, f"{uid}:{gid}", workspace)
        sandbox.agent_env = dict(agent_env or {})
        sandbox.disk_limited = limited
        sandbox.egress = EgressProxy(egress) if egress is not None else None
        if not background:
            sandbox._start()
            if sandbox._start_error is not None and own_workspace:
                remove_workspace(workspace)
            sandbox.started()
            return sandbox
        sandbox._starting = threading.Thread(target=sandbox._start, daemon=True)
        sandbox._starting.start()
        return sandbox

    def _start(self) -> None:
        try:
            self.container.start()
            self._place_egress()
        except (APIError, SandboxError) as exc:
            with contextlib.suppress(APIError):
                self.container.remove(force=True)
            detail = exc.explanation or exc if isinstance(exc, APIError) else exc
            self._start_error = SandboxError(f"cannot start the sandbox: {detail}")

    def _place_egress(self) -> None:
        """Put the allowlisting proxy's socket into the (new) network namespace."""
        if self.egress is None:
            return
        self.container.reload()
        pid = int(self.container.attrs.get("State", {}).get("Pid") or 0)
        try:
            if pid <= 0:
                raise EgressError("the container has no process")
            self.egress.attach(pid)
        except EgressError as exc:
            raise SandboxError(str(exc)) from exc

    def started(self) -> None:
        """Wait for a start under way; `SandboxError` if it failed."""
        if self._starting is not None:
            self._starting.join()
        if self._start_error is not None:
            raise self._start_error

    @property
    def name(self) -> str:
        return str(self.container.name)

    def exec(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        workdir: str = WORKSPACE,
        _survivors: str | None = None,
        _env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run `command` with bash (sh if the image has none) and return what happened.
        Every process it leaves behind dies with it (a spawned agent's session excepted).
        `DiskQuotaExceeded` when it filled the workspace's disk quota."""
        self.started()
        timeout_s = timeout_s or self.limits.command_timeout_s
        if _survivors is None:
            _survivors = "all" if self.agent_session is None else str(self.agent_session)
        api = self.client.api
        started = time.monotonic()
        try:
            argv = ["sh", "-c", WRAPPER, f"{timeout_s:g}", command, _survivors]
            exec_id = self._create_exec(argv, workdir, _env)
            stream = api.exec_start(exec_id, stream=True)
        except APIError as exc:
            return self._unavailable(exc, time.monotonic() - started)
        output = CappedOutput(MAX_OUTPUT_BYTES)
        reader = threading.Thread(target=output.drain, args=(stream,), daemon=True)
        reader.start()
        reader.join(timeout_s + HOST_GRACE_S)
        restarted = reader.is_alive() and not self._killed
        if restarted:  # the image has no `timeout`, or something ignores it
            self._restart()
            reader.join(HOST_GRACE_S)
        duration = time.monotonic() - started
        code = self._exit_code(exec_id)
        timed_out = restarted or (code == 137 and duration >= timeout_s)
        reasons = []
        if self._killed:
            reasons.append("sandbox killed")
        elif code != 0 or timed_out:
            reasons += self._kill_reasons(restarted)
        if timed_out:
            restart = "; the sandbox was restarted to stop it" if restarted else ""
            reasons.append(f"timed out after {timeout_s:g} s{restart}")
        self._check_disk()
        return ExecResult(code, output.text(), timed_out, duration, "; ".join(reasons) or None)

    def spawn(self, command: str, env: Mapping[str, str] | None = None) -> ExecResult:
        """Start `command` detached, with `agent_env` (over `env`, a preset's defaults), in a
        session of its own that survives the commands after it until `release_session()`
        (for an external agent polled by later commands). Host-written commands only: it is
        the one way past the cleanup."""
        launch = (
            f"setsid sh -c {shlex.quote(command)} </dev/null >/dev/null 2>&1 & p=$!; "
            # Wait until it leads its own session, and say which session; one already gone
            # (a quick command) had it too. Up to 10 s: on a loaded host 2 s was not always
            # enough, and an agent not known to lead its session is ended by the next
            # command's cleanup as a stray process.
            'for i in $(seq 1000); do read -r l < /proc/$p/stat 2>/dev/null || { echo "session '
            '$p"; break; }; set -- ${l##*) }; [ "$4" = "$p" ] && { echo "session $p"; break; }; '
            "sleep 0.01; done"
        )
        result = self.exec(launch, _survivors="none", _env={**(env or {}), **self.agent_env})
        found = re.search(r"^session (\d+)$", result.output, re.MULTILINE)
        self.agent_session = int(found.group(1)) if found else None
        return result

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The container paused (cgroup freezer) for the duration, so nothing in it races a
        copy of its files. On a loaded host the runtime sometimes fails a pause ("OCI runtime
        pause failed"): tried a few times before the error stands."""
        for attempt in Retrying(
            retry=retry_if_exception_type(APIError),
            stop=stop_after_attempt(PAUSE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.25, max=2),
            reraise=True,
        ):
            with attempt:
                self.container.reload()
                if self.container.status != "paused":
                    self.container.pause()
        try:
            yield
        finally:
            self.container.unpause()

    def release_session(self) -> None:
        """The spawned session no longer survives: the next command's cleanup ends it."""
        self.agent_session = None

    def _check_disk(self) -> None:
        if not self.disk_limited or self.disk_full:
            return
        try:
            hit = quota.full(self.workspace)
        except OSError:
            return  # the folder is gone (removed with the sandbox): nothing to measure
        if hit:
            self.disk_full = True
            raise DiskQuotaExceeded(
                f"disk quota hit: the task's workspace is full (limit {self.limits.disk}; "
                "`limits.disk` in nightcrew.yaml)"
            )

    def kill(self) -> None:
        """Cancel: stop the container now; a running `exec` returns within seconds."""
        self._killed = True
        if self._starting is not None:
            self._starting.join()  # a kill before the start would be undone by it
        with contextlib.suppress(APIError):  # already gone or not running: stopped anyway
            self.container.kill()

    def remove(self) -> None:
        if self._starting is not None:
            self._starting.join()  # a start racing the removal could leave it running
        with contextlib.suppress(NotFound):
            self.container.remove(force=True)
        if self.egress is not None:
            self.egress.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def _create_exec(
        self, argv: list[str], workdir: str, env: Mapping[str, str] | None = None
    ) -> str:
        try:
            return self._exec_id(argv, workdir, env)
        except APIError as exc:
            # Stopped but not cancelled (the OOM killer took PID 1, the engine restarted):
            # start again; the previous result said so.
            if self._killed or exc.status_code != 409:
                raise
            self.container.start()
            self._seen = dict(NO_COUNTS)
            with contextlib.suppress(SandboxError):  # without it the sandbox is just offline
                self._place_egress()
            return self._exec_id(argv, workdir, env)

    def _exec_id(
        self, argv: list[str], workdir: str = WORKSPACE, env: Mapping[str, str] | None = None
    ) -> str:
        # After the quota was hit only the host's hand-back runs: in the group that may use
        # the blocks kept in reserve (executor/git/quota.py), which the agent never had.
        user = self.user
        if self.disk_full:
            user = f"{user.split(':')[0]}:{quota.QUOTA_RESERVE_GID}"
        created = self.client.api.exec_create(
            self.container.id, argv, user=user, workdir=workdir, environment=dict(env or {})
        )
        return str(created["Id"])

    def _kill_reasons(self, restarted: bool) -> list[str]:
        """What the cgroup counted since the last look: OOM kills, refused forks."""
        if restarted:
            return []  # a new cgroup: the counts of the old one are gone
        counts = self._counters()
        if counts is None:
            state = self._state()
            if state.get("Running"):
                return []  # could not look; nothing to report
            why = f"out of memory (limit {self.limits.memory}), " if state.get("OOMKilled") else ""
            return [f"sandbox stopped ({why}restarts on the next command; /tmp and home emptied)"]
        reasons = []
        if counts["oom"] > self._seen["oom"]:
            reasons.append(f"out of memory (limit {self.limits.memory})")
        if counts["pids"] > self._seen["pids"]:
            reasons.append(f"process limit reached (pids {self.limits.pids})")
        self._seen = counts
        return reasons

    def _counters(self) -> dict[str, int] | None:
        """The cgroup's counts, or None when the probe cannot run. Retried briefly: right
        after a fork bomb the PID limit stays full until PID 1 has reaped the zombies."""
        for pause in (0.05, 0.1, 0.2, 0.4, 0):
            try:
                raw = self.client.api.exec_start(self._exec_id(["sh", "-c", COUNTERS]))
                counts = parse_counters(raw.decode(errors="replace"))
            except APIError:
                counts = None
            if counts is not None or not self._state().get("Running"):
                return counts
            time.sleep(pause)
        return None

    def _state(self) -> dict[str, object]:
        try:
            self.container.reload()
        except APIError:
            return {}  # removed
        return dict(self.container.attrs.get("State", {}))

    def _exit_code(self, exec_id: str) -> int:
        deadline = time.monotonic() + 2.0  # the engine may record the code a moment late
        while True:
            try:
                info = self.client.api.exec_inspect(exec_id)
            except APIError:
                return -1
            if not info["Running"] and info["ExitCode"] is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return -1
            time.sleep(0.02)

    def _restart(self) -> None:
        with contextlib.suppress(APIError, SandboxError):  # killed or removed meanwhile
            self.container.restart(timeout=0)
            self._place_egress()
        self._seen = dict(NO_COUNTS)

    def _unavailable(self, exc: APIError, duration: float) -> ExecResult:
        reason = "sandbox killed" if self._killed else "sandbox is not running"
        detail = exc.explanation or str(exc)
        return ExecResult(-1, f"{reason}: {detail}", False, duration, reason)


def remove_orphans(
    client: docker.DockerClient,
    *,
    executor_id: str | None = None,
    created_before: datetime | None = None,
) -> list[str]:
    """Remove sandboxes left behind by a crash: all of ours, or only `executor_id`'s (only
    those created before `created_before`, if given); with each, the workspace folder it owns
    (LABEL_WORKSPACE)."""
    labels = [LABEL] if executor_id is None else [LABEL, f"{LABEL_EXECUTOR}={executor_id}"]
    removed = []
    for container in client.containers.list(
        all=True, filters={"label": labels}, ignore_removed=True
    ):
        if created_before is not None and _created(container) >= created_before:
            continue
        try:
            container.remove(force=True)
        except NotFound:
            continue
        removed.append(str(container.name))
        if own := container.labels.get(LABEL_WORKSPACE):
            with contextlib.suppress(WorkspaceError):  # the next sweep cannot find it again
                remove_workspace(Path(own))
    return removed


def _created(container: Any) -> datetime:
    """When the engine made the container (its RFC 3339 time, nanoseconds cut to seconds)."""
    return datetime.fromisoformat(str(container.attrs["Created"])[:19]).replace(tzinfo=UTC)


def prepare_workspace(workspace: Path) -> tuple[int, int]:
    """The uid:gid commands run as (see sandbox_ids). As root, the tree is handed to those
    ids (call again after the host writes into it as root)."""
    ids = sandbox_ids(workspace)
    if os.geteuid() == 0:
        _hand_over(workspace, *ids)
    return ids


def sandbox_ids(workspace: Path | None) -> tuple[int, int]:
    """The uid:gid commands run as, chosen so the host can read and commit what they write:
    the host's own ids; as root, the workspace owner's, else (and for a folder root is yet to
    make, None) FALLBACK_UID."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    owner = workspace.stat() if workspace is not None else None
    if owner is not None and owner.st_uid != 0:
        return owner.st_uid, owner.st_gid
    return FALLBACK_UID, FALLBACK_UID


def _hand_over(root: Path, uid: int, gid: int) -> None:
    # lchown, and os.walk does not follow links: a symlink the agent planted must not
    # redirect a chown run by root on the host.
    inside = (os.path.join(d, name) for d, dirs, files in os.walk(root) for name in dirs + files)
    for path in chain([str(root)], inside):
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:40] or "task"
