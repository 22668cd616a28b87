"""Fixtures for tests that need the real Docker engine and the sandbox image.

Registered in the root conftest.py. Without an engine or
image the tests skip on a laptop and fail in CI (see `need`)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import DockerException
from docker.models.containers import Container

from executor.config.schema import DEFAULT_IMAGE
from executor.sandbox.container import Sandbox, SandboxError, remove_orphans
from executor.sandbox.image import SANDBOX_DIR, ensure_image
from executor.sandbox.recipe import freshness
from tests.conftest import need

# Every container the tests start carries this executor id, so a session cleans up only its
# own leftovers and never a real executor's sandboxes on the same engine.
TEST_EXECUTOR = f"pytest-{uuid.uuid4().hex[:8]}"

MakeSandbox = Callable[..., Sandbox]


@pytest.fixture(scope="session")
def test_executor() -> str:
    return TEST_EXECUTOR


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        need("Docker engine", f"{exc.__class__.__name__}: {exc}".splitlines()[0])
    yield client
    remove_orphans(client, executor_id=TEST_EXECUTOR)
    client.close()


@contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """A lock shared by every test process on this machine (pytest-xdist's workers, other
    runs): what builds an image under a fixed tag builds it once, not once per worker."""
    with open(Path(tempfile.gettempdir()) / f"nightcrew-tests-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    """The default sandbox image, built registry-free by sandbox/build-image.sh if missing
    or built from another recipe (about a minute, once per machine), else from the
    Dockerfile where a registry is up. One test process builds it; the others wait for it."""
    with one_at_a_time("sandbox-image"):
        return _sandbox_image(docker_client)


def _sandbox_image(docker_client: docker.DockerClient) -> str:
    state = freshness(docker_client, DEFAULT_IMAGE)
    if state.present and not state.stale:
        return DEFAULT_IMAGE
    if os.geteuid() == 0 and shutil.which("debootstrap"):
        script = SANDBOX_DIR / "build-image.sh"
        result = subprocess.run([script], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            need("sandbox image", f"{script} failed: {result.stderr.strip()[-500:]}")
        return DEFAULT_IMAGE
    try:
        ensure_image(docker_client, DEFAULT_IMAGE)
    except SandboxError as exc:
        need("sandbox image", str(exc))
    return DEFAULT_IMAGE


@pytest.fixture
def make_sandbox(
    docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path
) -> Iterator[MakeSandbox]:
    """Start sandboxes (removed after the test); the workspace defaults to an empty folder."""
    started: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        if "workspace" not in options:
            options["workspace"] = tmp_path / f"ws{len(started)}"
            options["workspace"].mkdir()
        options.setdefault("task_id", f"t{len(started)}")
        options.setdefault("image", sandbox_image)
        sandbox = Sandbox.start(docker_client, executor_id=TEST_EXECUTOR, **options)
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.remove()


def running_in(containers: Iterable[Container], command: str) -> bool:
    """Whether a process whose command line holds `command` runs in one of `containers`:
    the positive signal that an agent's or a check's command has started (gone or stopped
    containers count as not running it)."""
    for container in containers:
        try:
            processes = container.top().get("Processes") or []
        except DockerException:
            continue
        if any(command in " ".join(process) for process in processes):
            return True
    return False
