"""Warm sandboxes: containers started ahead of demand, so a task does not wait for one.

Starting a container takes about a second under load, and workers that finish together
queue their starts in the engine. A pool keeps spares per sandbox spec (image, limits,
network, environment): fresh containers that have never run a command, each with an empty
workspace folder of its own mounted at /workspace. `take()` hands a spare to exactly one
task, which makes its clone in that folder, and starts a replacement in the background.
Nothing is ever given back: a used sandbox is removed, never reused (an agent may leave
processes or files behind).

A spare is labelled like every sandbox (its executor's id; its task label says "warm") and
names its folder in a label, so the sweep that removes a crashed executor's sandboxes
(remove_orphans) removes spares and their folders too; `close()` removes them at shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError

from executor.config.schema import Limits, RepoConfig
from executor.git.workspace import WorkspaceError, private_dir
from executor.git.workspace import remove as remove_workspace
from executor.sandbox.container import Sandbox
from executor.sandbox.egress import allowlist

log = logging.getLogger(__name__)

WARM_TASK = "warm"  # the task label of a spare: labels are fixed when the container is made
# Containers started at once to make spares: the engine starts two about as fast as eight
# (it serialises much of the work), and spares must not crowd out the tasks' own calls.
FILLERS = 2
# Used sandboxes removed at once, off the tasks' path. One: tasks finish in waves, and the
# removals must not slow the checkpoints of the wave's other tasks (measured: 1 beats 4).
REMOVERS = 1
# Bytecode caches are build litter that the leftover commit would otherwise sweep up.
SANDBOX_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a sandbox is started with except its task: spares are kept per spec."""

    image: str
    limits: Limits
    network: bool
    read_only_root: bool
    env: tuple[tuple[str, str], ...]  # the container's: every command sees it
    agent_env: tuple[tuple[str, str], ...] = ()  # the external agent's process only
    egress: tuple[str, ...] | None = None  # host:port allowed through the proxy, if a list

    @classmethod
    def of(cls, repo: RepoConfig, model_url: str | None = None) -> SandboxSpec:
        """`model_url`: the model endpoint that `network: [model]` stands for."""
        agent_env = {}
        if repo.agent != "builtin":  # an external agent brings its own model access
            agent_env = {name: os.environ[name] for name in repo.agent_env if name in os.environ}
        listed = not isinstance(repo.network, bool)
        return cls(
            repo.image,
            repo.limits,
            repo.network is True,
            repo.read_only_root,
            tuple(SANDBOX_ENV.items()),
            tuple(agent_env.items()),
            allowlist(repo.network, model_url) if listed else None,  # type: ignore[arg-type]
        )


class WarmPool:
    def __init__(
        self,
        client: docker.DockerClient,
        *,
        executor_id: str,
        root: Path,
        spares: int,
        demand: Callable[[], int] | None = None,
    ) -> None:
        """Keep up to `spares` ready sandboxes per spec, with their folders under `root`, but
        no more than `demand()` (tasks waiting) says will be taken soon. With 0 spares nothing
        happens in the background: each sandbox is started when taken and removed when
        retired, on the caller's thread."""
        self.client, self.executor_id, self.root, self.spares = client, executor_id, root, spares
        self.demand = demand
        self._ready: dict[SandboxSpec, list[Sandbox]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._filler = ThreadPoolExecutor(max_workers=FILLERS, thread_name_prefix="warm-sandbox")
        self._removers = ThreadPoolExecutor(max_workers=REMOVERS, thread_name_prefix="retire")

    def take(self, spec: SandboxSpec) -> Sandbox:
        """A fresh sandbox for `spec` with an empty workspace folder: a spare if one is ready,
        else one made now and starting while the task prepares (its first command raises
        `SandboxError` if it cannot start). Either way a replacement is started in the
        background."""
        sandbox = self._pop(spec)
        if self.spares:
            with contextlib.suppress(RuntimeError):  # closed: no more spares
                self._filler.submit(self._fill, spec)
        return sandbox or self._start(spec, background=True)

    def retire(self, sandbox: Sandbox, then: Callable[[], None] | None = None) -> None:
        """Remove a used sandbox in the background, then run `then` (e.g. keep or remove its
        workspace folder, which must wait for the container to be gone)."""

        def remove() -> None:
            try:
                sandbox.remove()
                if then is not None:
                    then()
            except Exception:  # a sandbox left behind is swept when the executor restarts
                log.exception("retiring sandbox %s failed", sandbox.name)

        if self.spares:
            with contextlib.suppress(RuntimeError):  # closed: remove it here and now
                self._removers.submit(remove)
                return
        remove()

    def fill(self, specs: Iterable[SandboxSpec]) -> None:
        """Start spares for `specs` in the background (at start-up, for the repos' specs)."""
        for spec in specs:
            for _ in range(self.spares):
                self._filler.submit(self._fill, spec)

    def close(self) -> None:
        """Stop making spares and remove those not taken."""
        with self._lock:
            self._closed = True
        self._filler.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = [sandbox for spares in self._ready.values() for sandbox in spares]
            self._ready.clear()
        with ThreadPoolExecutor(max_workers=4) as removers:  # nothing else to wait for now
            list(removers.map(discard, left))
        self._removers.shutdown(wait=True)  # the retired ones too

    def _pop(self, spec: SandboxSpec) -> Sandbox | None:
        while True:
            with self._lock:
                spares = self._ready.get(spec)
                if not spares:
                    return None
                sandbox = spares.pop(0)  # the oldest first: none waits for ever
            if _running(sandbox):
                return sandbox
            # Removed meanwhile: another executor swept it while this one held no task.
            discard(sandbox)

    def _fill(self, spec: SandboxSpec) -> None:
        with self._lock:
            ready = len(self._ready.get(spec, []))
            if self._closed or ready >= self.spares:
                return
        if ready >= self._demand():
            return
        try:
            sandbox = self._start(spec)
        except Exception:  # a task that needs one starts its own and reports the reason
            log.exception("could not start a warm sandbox")
            return
        with self._lock:
            if not self._closed:
                self._ready.setdefault(spec, []).append(sandbox)
                return
        discard(sandbox)

    def _demand(self) -> int:
        if self.demand is None:
            return self.spares
        try:
            return self.demand()
        except Exception:  # the database is away: tasks may still be claimed later
            log.exception("could not count the waiting tasks")
            return self.spares

    def _start(self, spec: SandboxSpec, *, background: bool = False) -> Sandbox:
        private_dir(self.root)  # other host users must not reach the workspaces
        return Sandbox.start(
            self.client,
            background=background,
            task_id=WARM_TASK,
            executor_id=self.executor_id,
            workspace=self.root / secrets.token_hex(8),
            own_workspace=True,
            image=spec.image,
            limits=spec.limits,
            network=spec.network,
            read_only_root=spec.read_only_root,
            env=dict(spec.env),
            agent_env=dict(spec.agent_env),
            egress=spec.egress,
        )


def discard(sandbox: Sandbox) -> None:
    """Remove a sandbox and the workspace folder it owns."""
    with contextlib.suppress(APIError):
        sandbox.remove()
    with contextlib.suppress(WorkspaceError):
        remove_workspace(sandbox.workspace)


def _running(sandbox: Sandbox) -> bool:
    try:
        sandbox.container.reload()
    except APIError:
        return False
    return sandbox.container.status == "running"
