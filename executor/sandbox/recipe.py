"""What the default sandbox image is built from, and whether an image was built from it.

The recipe is `sandbox/Dockerfile` and `sandbox/packages.txt` (the package list both builds
install). Its hash, sha256 of the two files one after the other (`cat Dockerfile packages.txt
| sha256sum`, so sandbox/build-image.sh computes the same), is put on the image as the label
`nightcrew.recipe` by either build. An image whose label differs, or that has none, was built
from something else: an older package list, or another project's image under our tag. It is
rebuilt before a task runs in it (executor/sandbox/image.py), and `nightcrew doctor` says so.

The recipe ships in the wheel (`executor/sandbox_recipe`, pyproject's force-include), so an
installed nightcrew can check and build its image outside its source tree."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound

LABEL = "nightcrew.recipe"
FILES = ("Dockerfile", "packages.txt")


def _recipe_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[2] / "sandbox"
    if (source_tree / "Dockerfile").is_file():
        return source_tree
    return Path(__file__).resolve().parents[1] / "sandbox_recipe"  # installed from a wheel


SANDBOX_DIR = _recipe_dir()


def recipe_hash(context: Path = SANDBOX_DIR) -> str | None:
    """The hash of the recipe in `context` (its Dockerfile, then its package list if it has
    one); None without a Dockerfile (nothing to compare with)."""
    if not (context / FILES[0]).is_file():
        return None
    digest = hashlib.sha256()
    for name in FILES:
        if (context / name).is_file():
            digest.update((context / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Freshness:
    present: bool
    built_from: str | None  # the image's label
    recipe: str | None  # the recipe's hash now

    @property
    def stale(self) -> bool:
        """Present, and not built from the recipe as it is now."""
        return self.present and self.recipe is not None and self.built_from != self.recipe

    def describe(self, image: str) -> str:
        if not self.present:
            return f"{image} is not on the engine"
        if not self.stale:
            return f"{image} is built from the current sandbox recipe"
        what = f"recipe {self.built_from[:12]}" if self.built_from else "no nightcrew.recipe label"
        return (
            f"{image} was not built from the current sandbox/Dockerfile and package list "
            f"({what}; the current one is {(self.recipe or '')[:12]})"
        )


def freshness(client: docker.DockerClient, image: str, context: Path = SANDBOX_DIR) -> Freshness:
    try:
        found = client.images.get(image)
    except ImageNotFound:
        return Freshness(False, None, recipe_hash(context))
    labels = (found.attrs.get("Config") or {}).get("Labels") or {}
    return Freshness(True, labels.get(LABEL), recipe_hash(context))
