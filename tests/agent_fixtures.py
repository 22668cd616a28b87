"""The sandbox image with real external agents (aider, Codex CLI, Claude Code) installed from
PyPI and npm: built once (minutes) and reused across sessions through its content-hashed tag
(executor/sandbox/agent_image.py). Registered in the root conftest.py."""

from __future__ import annotations

import docker
import pytest

from executor.sandbox.agent_image import build_agents_image
from executor.sandbox.container import SandboxError
from tests.conftest import need
from tests.docker_fixtures import one_at_a_time

AGENTS = ["aider", "codex", "claude-code"]


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient, sandbox_image: str) -> str:
    try:
        with one_at_a_time("agent-image"):  # one worker builds it, the others reuse it
            return build_agents_image(docker_client, AGENTS, base=sandbox_image)
    except SandboxError as exc:
        need("agent image", str(exc))
        raise
