"""The sandbox image: present, pulled, or built from the repo's sandbox/Dockerfile."""

from __future__ import annotations

from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from executor.config.schema import DEFAULT_IMAGE
from executor.sandbox.container import SandboxError

SANDBOX_DIR = Path(__file__).resolve().parent.parent / "sandbox"
OFFLINE_HINT = "without a registry, build it with sandbox/build-image.sh (debootstrap, as root)"


def ensure_image(client: docker.DockerClient, image: str = DEFAULT_IMAGE) -> None:
    """Make `image` available: the default one is built on first use, others are pulled."""
    try:
        client.images.get(image)
        return
    except ImageNotFound:
        pass
    if image == DEFAULT_IMAGE:
        build_image(client, image)
        return
    try:
        client.images.pull(image)
    except APIError as exc:
        raise SandboxError(f"cannot pull sandbox image {image}: {exc.explanation or exc}") from exc


def build_image(
    client: docker.DockerClient, tag: str = DEFAULT_IMAGE, *, context: Path = SANDBOX_DIR
) -> None:
    """Build `context`'s Dockerfile as `tag`; its FROM needs a reachable registry."""
    if not (context / "Dockerfile").is_file():
        raise SandboxError(f"no {context / 'Dockerfile'} (is nightcrew run from its source tree?)")
    try:
        client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    except (BuildError, APIError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SandboxError(
            f"cannot build sandbox image {tag} from {context / 'Dockerfile'}: {reason}; "
            + OFFLINE_HINT
        ) from exc
