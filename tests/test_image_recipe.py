"""Images you can trust: the sandbox image carries the hash of what it was built from, and a
stale or foreign one is found and rebuilt before a task runs in it. Real Docker builds, on a
small recipe of our own FROM the sandbox image (no registry needed), under a tag of their own
so the shared image is never touched."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound

from bot.terminal import doctor
from executor.sandbox.image import build_image, ensure_image
from executor.sandbox.recipe import LABEL, SANDBOX_DIR, freshness, recipe_hash


@pytest.fixture
def tag(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"nightcrew-recipe-test:{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(ImageNotFound):
        docker_client.images.remove(name, force=True)


def recipe(folder: Path, sandbox_image: str, packages: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nCOPY packages.txt /tmp/packages.txt\n"
    )
    (folder / "packages.txt").write_text(packages)
    return folder


def test_the_build_script_and_the_executor_agree_on_the_hash() -> None:
    script = 'cat "$0/Dockerfile" "$0/packages.txt" | sha256sum | cut -c1-64'
    shell = subprocess.run(["sh", "-c", script, str(SANDBOX_DIR)], capture_output=True, text=True)
    assert shell.stdout.strip() == recipe_hash() and len(shell.stdout.strip()) == 64
    assert "LABEL nightcrew.recipe=$recipe" in (SANDBOX_DIR / "build-image.sh").read_text()


def test_the_default_image_is_built_from_the_current_recipe(
    docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    state = freshness(docker_client, sandbox_image)
    assert state.present and not state.stale, state.describe(sandbox_image)
    assert doctor.check_image(docker_client, sandbox_image).status == "ok"


def test_an_image_from_an_older_package_list_is_rebuilt_before_use(
    docker_client: docker.DockerClient, sandbox_image: str, tag: str, tmp_path: Path
) -> None:
    context = recipe(tmp_path / "recipe", sandbox_image, "git\n")
    build_image(docker_client, tag, context=context)
    old = docker_client.images.get(tag)
    assert old.labels[LABEL] == recipe_hash(context)
    ensure_image(docker_client, tag, context=context)  # current: kept as it is
    assert docker_client.images.get(tag).id == old.id

    (context / "packages.txt").write_text("git\njq\n")  # the package list moved on
    stale = doctor.check_image(docker_client, tag, context=context)
    assert stale.failed and "package list" in stale.detail and "--fix" in (stale.fix or "")
    ensure_image(docker_client, tag, context=context)  # what the executor does at start
    new = docker_client.images.get(tag)
    assert new.id != old.id and new.labels[LABEL] == recipe_hash(context)
    inside = docker_client.containers.run(tag, ["cat", "/tmp/packages.txt"], remove=True)
    assert inside.decode() == "git\njq\n"
    assert doctor.check_image(docker_client, tag, context=context).status == "ok"


def test_a_foreign_image_under_our_tag_is_not_taken_as_good(
    docker_client: docker.DockerClient, sandbox_image: str, tag: str, tmp_path: Path
) -> None:
    """Someone else's image under the tag (no label at all): doctor says so, the fix
    rebuilds it from our recipe."""
    context = recipe(tmp_path / "recipe", sandbox_image, "git\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "app").write_text("another project\n")
    (foreign / "Dockerfile").write_text("FROM scratch\nCOPY app /app\n")
    docker_client.images.build(path=str(foreign), tag=tag, rm=True)
    result = doctor.check_image(docker_client, tag, context=context)
    assert result.failed and "no nightcrew.recipe label" in result.detail
    assert doctor.provide_image(docker_client, tag, context=context).status == "ok"
    assert docker_client.images.get(tag).labels[LABEL] == recipe_hash(context)


def test_doctor_checks_the_tools_inside_the_image(
    docker_client: docker.DockerClient, sandbox_image: str, tag: str, tmp_path: Path
) -> None:
    ok = doctor.check_tools(docker_client, sandbox_image)
    assert ok.status == "ok", ok.detail
    no_ps = tmp_path / "no-ps"
    no_ps.mkdir()
    (no_ps / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nUSER root\nRUN rm -f /usr/bin/ps /bin/ps\nUSER agent\n"
    )
    docker_client.images.build(path=str(no_ps), tag=tag, rm=True)
    missing = doctor.check_tools(docker_client, tag)
    assert missing.failed and missing.detail == "missing: ps", missing.detail
    docker_client.images.remove(tag, force=True)
    no_shell = tmp_path / "no-shell"
    no_shell.mkdir()
    (no_shell / "README").write_text("not a sandbox\n")
    (no_shell / "Dockerfile").write_text("FROM scratch\nCOPY README /README\n")
    docker_client.images.build(path=str(no_shell), tag=tag, rm=True)
    shell = doctor.check_tools(docker_client, tag)
    assert shell.failed and "no shell" in shell.detail, shell.detail
