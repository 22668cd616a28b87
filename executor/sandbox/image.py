"""The sandbox image: present and built from the current recipe, pulled, or built.

The default image (`nightcrew-sandbox:latest`) is ours: built from the recipe in sandbox/
(executor/sandbox/recipe.py), and rebuilt when its `nightcrew.recipe` label says it was built
from something else, so a task never runs in a stale or foreign image. Other images are the
user's: pulled when missing, never rebuilt."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from executor.config.schema import DEFAULT_IMAGE
from executor.sandbox.container import SandboxError
from executor.sandbox.recipe import LABEL, SANDBOX_DIR, freshness, recipe_hash

__all__ = ["SANDBOX_DIR", "build_image", "ensure_image", "provide_image"]

log = logging.getLogger(__name__)
OFFLINE_HINT = "without a registry, build it with sandbox/build-image.sh (debootstrap, as root)"
BUILD_SCRIPT_TIMEOUT_S = 1800


def ensure_image(
    client: docker.DockerClient, image: str = DEFAULT_IMAGE, *, context: Path = SANDBOX_DIR
) -> None:
    """Make `image` available. Ours (the default, or one built from `context`) is built
    when missing and rebuilt when it was built from another recipe; others are pulled."""
    ours = image == DEFAULT_IMAGE or context != SANDBOX_DIR
    if ours:
        state = freshness(client, image, context)
        if state.present and not state.stale:
            return
        if state.stale:
            log.warning("%s; rebuilding it", state.describe(image))
        provide_image(client, image, context=context)
        after = freshness(client, image, context)
        if after.stale:
            raise SandboxError(after.describe(image) + " even after a rebuild")
        return
    try:
        client.images.get(image)
        return
    except ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except APIError as exc:
        raise SandboxError(f"cannot pull sandbox image {image}: {exc.explanation or exc}") from exc


def provide_image(
    client: docker.DockerClient, image: str = DEFAULT_IMAGE, *, context: Path = SANDBOX_DIR
) -> None:
    """Build our image: registry-free with sandbox/build-image.sh where we can (root and
    debootstrap), else from the Dockerfile (its FROM needs a registry)."""
    script = context / "build-image.sh"
    if script.is_file() and os.geteuid() == 0 and shutil.which("debootstrap"):
        done = subprocess.run(
            ["sh", str(script), image],
            capture_output=True,
            text=True,
            timeout=BUILD_SCRIPT_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise SandboxError(f"{script} failed: {done.stderr.strip()[-300:]}")
        return
    build_image(client, image, context=context)


def build_image(
    client: docker.DockerClient, tag: str = DEFAULT_IMAGE, *, context: Path = SANDBOX_DIR
) -> None:
    """Build `context`'s Dockerfile as `tag`, labelled with its recipe's hash."""
    recipe = recipe_hash(context)
    if recipe is None:
        raise SandboxError(f"no {context / 'Dockerfile'} to build {tag} from; " + OFFLINE_HINT)
    try:
        client.images.build(
            path=str(context), tag=tag, rm=True, forcerm=True, labels={LABEL: recipe}
        )
    except (BuildError, APIError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SandboxError(
            f"cannot build sandbox image {tag} from {context / 'Dockerfile'}: {reason}; "
            + OFFLINE_HINT
        ) from exc
