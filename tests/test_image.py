"""nightcrew's own image: built from the Dockerfile with the engine at hand (on a base imported
by deploy/build-base.sh where no registry is reachable), it answers `--help` and `doctor`, and
run as an executor container (the Docker socket and the shared home mounted, as in
docker-compose.yml) it reports healthy, serves /metrics and runs a real task."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from docker.errors import DockerException, ImageNotFound
from sqlalchemy import text
from sqlmodel import SQLModel

from storage.db import make_engine
from storage.lifecycle import State
from tests.conftest import need
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import add_task, task, wait_for

ROOT = Path(__file__).resolve().parent.parent
BASE = "nightcrew-base:bookworm"
REGISTRY_BASE = "python:3.11-slim-bookworm"
IMAGE = "nightcrew:pytest"
IMAGE_UID = 10001


def docker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _base(client: docker.DockerClient) -> str:
    """A base image: the imported one if present or buildable (root), else the registry's."""
    for tag in (BASE, REGISTRY_BASE):
        try:
            client.images.get(tag)
            return tag
        except ImageNotFound:
            pass
    if os.geteuid() == 0 and shutil.which("debootstrap"):
        done = subprocess.run(
            [ROOT / "deploy" / "build-base.sh", BASE], capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            pytest.fail(f"deploy/build-base.sh failed: {done.stderr.strip()[-1000:]}")
        return BASE
    try:
        client.images.pull(REGISTRY_BASE)
    except DockerException as exc:
        need("a base image", f"no {BASE}, no debootstrap as root, and no registry: {exc}")
    return REGISTRY_BASE


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient) -> str:
    if not shutil.which("docker"):
        need("docker CLI", "not on PATH")
    base = _base(docker_client)
    done = docker_cli("build", "--build-arg", f"BASE={base}", "-t", IMAGE, str(ROOT), timeout=900)
    assert done.returncode == 0, f"docker build failed:\n{(done.stdout + done.stderr)[-3000:]}"
    return IMAGE


def test_the_image_answers_help_as_a_non_root_user(image: str) -> None:
    done = docker_cli("run", "--rm", image, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("up", "bot", "executor", "doctor"):
        assert f" {command} " in done.stdout
    who = docker_cli("run", "--rm", "--entrypoint", "id", image)
    assert who.stdout.startswith(f"uid={IMAGE_UID}(nightcrew)")
    healthcheck = json.loads(docker_cli("image", "inspect", image).stdout)[0]["Config"]
    assert "/healthz" in " ".join(healthcheck["Healthcheck"]["Test"])


def test_doctor_in_a_bare_container_says_what_is_missing(image: str) -> None:
    done = docker_cli("run", "--rm", "-e", "COLUMNS=200", image, "doctor")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "✗ config: " in out  # no nightcrew.yaml and no git repo
    assert "✓ database: sqlite:////var/lib/nightcrew/nightcrew.db" in out
    assert "✗ docker: " in out and "docker.sock" in out
    assert "✗ model: no model set" in out
    assert "- slack: not configured" in out
    assert "3 problem(s) found" in out
    assert "Traceback" not in done.stderr


@pytest.fixture
def shared_home(tmp_path: Path, git_repo: Path) -> Path:
    """The executor's home at the same path inside and outside (sandboxes are started by the
    host's engine and bind-mount workspaces by that path), owned by the image's user."""
    home = tmp_path / "shared"
    home.mkdir()
    shutil.copytree(git_repo, home / "app", symlinks=True)
    (home / "nightcrew.yaml").write_text(
        yaml.safe_dump(
            {"repos": {"app": {"path": str(home / "app"), "review": {"enabled": False}}}}
        )
    )
    subprocess.run(["chown", "-R", f"{IMAGE_UID}:{IMAGE_UID}", str(home)], check=False)
    if home.stat().st_uid != IMAGE_UID:
        need("root", "the shared home must belong to the image's user (chown)")
    os.chmod(tmp_path, 0o755)
    return home


@pytest.fixture
def executor_container(
    image: str, shared_home: Path, pg_database: str, sandbox_image: str
) -> Iterator[tuple[str, str, ScriptedLLM]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"nightcrew-pytest-{uuid.uuid4().hex[:8]}"
    sock_gid = os.stat("/var/run/docker.sock").st_gid
    engine = make_engine(pg_database)
    with engine.begin() as conn:  # the session's database: other tests' tasks must not be run
        tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    with ScriptedLLM([reply(tool_call("finish", {"summary": "nothing to do"}))]) as llm:
        env = {
            "NIGHTCREW_DATABASE_URL": pg_database,
            "NIGHTCREW_HOME": str(shared_home),
            "NIGHTCREW_CONFIG": str(shared_home / "nightcrew.yaml"),
            "NIGHTCREW_MODEL": "scripted-model",
            "OPENAI_BASE_URL": llm.base_url,
            "NIGHTCREW_ADMIN_PORT": str(port),
            "COLUMNS": "200",
        }
        started = docker_cli(
            "run", "-d", "--name", name, "--network", "host",
            "--group-add", str(sock_gid),
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-v", f"{shared_home}:{shared_home}",
            "--health-interval", "1s", "--health-start-period", "30s",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            image, "executor",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            yield name, f"http://127.0.0.1:{port}", llm
        finally:
            logs = docker_cli("logs", name)
            docker_cli("rm", "-f", name)
            print(logs.stdout[-3000:], logs.stderr[-3000:])


def test_an_executor_container_is_healthy_and_runs_a_task(
    executor_container: tuple[str, str, ScriptedLLM], pg_database: str
) -> None:
    name, admin, llm = executor_container

    def health() -> str:
        state = docker_cli("inspect", "-f", "{{json .State}}", name).stdout
        status = json.loads(state or "{}")
        assert status.get("Running"), docker_cli("logs", name).stderr[-2000:]
        return str((status.get("Health") or {}).get("Status"))

    wait_for(lambda: health() == "healthy", timeout=90)

    engine = make_engine(pg_database)
    try:
        task_id = add_task(engine, "say hello")
        wait_for(lambda: task(engine, task_id).state is State.AWAITING_APPROVAL, timeout=120)
        assert llm.remaining == 0
        metrics = httpx.get(f"{admin}/metrics", timeout=10).text
        assert 'nightcrew_tasks{state="awaiting_approval"} 1.0' in metrics
        assert 'nightcrew_tasks_finished_total{state="awaiting_approval"} 1.0' in metrics
    finally:
        engine.dispose()

    doctor = docker_cli("exec", name, "nightcrew", "doctor")
    assert "✓ config: " in doctor.stdout and "✓ database: " in doctor.stdout
    assert "✓ docker: engine " in doctor.stdout
    assert "✓ image nightcrew-sandbox:latest: present" in doctor.stdout

    stopped = docker_cli("stop", "-t", "30", name, timeout=60)
    assert stopped.returncode == 0
    code = docker_cli("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    assert code == "0", docker_cli("logs", name).stderr[-2000:]  # SIGTERM: a clean stop


def test_the_compose_file_is_valid_and_scales(tmp_path: Path) -> None:
    """`docker-compose config` accepts it; executors can be scaled (no fixed name or port)."""
    compose = ROOT / "docker-compose.yml"
    if not shutil.which("docker-compose"):
        need("docker-compose", "not on PATH")
    done = subprocess.run(
        ["docker-compose", "-f", str(compose), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"postgres", "bot", "executor"}
    executor = services["executor"]
    assert "container_name" not in executor and "ports" not in executor
    assert executor["command"][0] == "executor" and services["bot"]["command"] == ["bot"]
    mounts = [str(v) for v in executor["volumes"]]
    assert any("/var/run/docker.sock" in m for m in mounts)
    assert any(m.startswith("/var/lib/nightcrew:/var/lib/nightcrew") for m in mounts)
