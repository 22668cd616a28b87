"""Sandbox images with external agents (aider, Codex CLI, Claude Code) installed, built on top
of the registry-free base image from PyPI, npm and Debian's packages only
(sandbox/agents/Dockerfile). The tag names a hash of everything that goes into the build, so
the same request reuses the image already built and a changed recipe builds a new one."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from executor.config.schema import DEFAULT_IMAGE, EXTERNAL_AGENTS
from executor.sandbox.container import SandboxError

RECIPE = Path(__file__).resolve().parents[2] / "sandbox" / "agents"
AGENTS_LABEL = "nightcrew.agents"  # on the image: the agents it holds, comma-separated
# Where TLS to the registries verifies (a re-signing proxy's CA is added to this bundle).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
REPOSITORY = "nightcrew-sandbox"


def normalise(agents: Iterable[str]) -> list[str]:
    """The agents asked for, known, without repeats, in a fixed order; ValueError otherwise."""
    wanted = {a.strip() for a in agents if a.strip()}
    unknown = wanted - set(EXTERNAL_AGENTS)
    if unknown or not wanted:
        known = ", ".join(EXTERNAL_AGENTS)
        raise ValueError(f"unknown agents {', '.join(sorted(unknown)) or '(none)'}; known: {known}")
    return [a for a in EXTERNAL_AGENTS if a in wanted]


def image_tag(client: docker.DockerClient, agents: list[str], base: str = DEFAULT_IMAGE) -> str:
    """The tag a build of `agents` on `base` gets: the same recipe, base name and CA, the same
    tag. (Not the base's image id: the base is rebuilt from the same package list now and
    then, and an agent image that takes minutes to build stays good.)"""
    try:
        client.images.get(base)
    except ImageNotFound as exc:
        raise SandboxError(
            f"base image {base} is missing; build it first with sandbox/build-image.sh"
        ) from exc
    digest = hashlib.sha256(base.encode())
    for name in ("Dockerfile", "install-agents.sh"):
        digest.update((RECIPE / name).read_bytes())
    if HOST_CA.is_file():
        digest.update(HOST_CA.read_bytes())
    digest.update(",".join(agents).encode())
    return f"{REPOSITORY}:{'-'.join(agents)}-{digest.hexdigest()[:12]}"


def build_agents_image(
    client: docker.DockerClient,
    agents: Iterable[str],
    *,
    base: str = DEFAULT_IMAGE,
    tag: str | None = None,
) -> str:
    """Build (or reuse) an image with `agents` on `base`; returns the content-hashed tag, and
    also tags it `tag` when given. Needs PyPI (aider) and npm + Debian's packages (Node, for
    codex and claude-code) reachable from a build container."""
    chosen = normalise(agents)
    hashed = image_tag(client, chosen, base)
    try:
        image = client.images.get(hashed)
    except ImageNotFound:
        image = _build(client, chosen, base, hashed)
    if tag:
        repository, _, version = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
        image.tag(repository, version or "latest")
    return hashed


def _build(client: docker.DockerClient, agents: list[str], base: str, tag: str) -> object:
    with tempfile.TemporaryDirectory(prefix="nightcrew-agents-") as tmp:
        context = Path(tmp)
        for name in ("Dockerfile", "install-agents.sh"):
            shutil.copy(RECIPE / name, context / name)
        ca = context / "ca.crt"
        ca.write_bytes(HOST_CA.read_bytes() if HOST_CA.is_file() else b"")
        try:
            image, _ = client.images.build(
                path=str(context),
                tag=tag,
                buildargs={"BASE": base, "AGENTS": ",".join(agents)},
                labels={AGENTS_LABEL: ",".join(agents)},
                rm=True,
                forcerm=True,
                pull=False,
            )
        except (BuildError, APIError) as exc:
            lines = [str(c.get("stream", "")).strip() for c in getattr(exc, "build_log", [])]
            tail = " | ".join(line for line in lines if line)[-1500:]
            raise SandboxError(f"cannot build agent image {tag}: {exc}; {tail}") from exc
    return image


def agents_in(client: docker.DockerClient, image: str) -> set[str] | None:
    """The agents an image says it holds (its label); None when the image is missing."""
    try:
        found = client.images.get(image)
    except ImageNotFound:
        return None
    labels = found.labels or {}
    return {a for a in labels.get(AGENTS_LABEL, "").split(",") if a}
