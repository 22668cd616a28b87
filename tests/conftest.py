"""Shared fixtures: real SQLite files and a real PostgreSQL server, real git repos."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlmodel import SQLModel

from storage.db import make_engine, normalize_url

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "NIGHTCREW_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
# Processes the tests start serve their task pages on any free port, not the default 8780: the
# tests run side by side (pytest-xdist), and two bots on one fixed port would collide.
os.environ.setdefault("NIGHTCREW_WEB_PORT", "0")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def need(what: str, why: str) -> None:
    """Skip on a laptop without `what`; in CI a missing engine fails the run."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {why}")
    pytest.skip(f"{what} unavailable: {why}")


# Tests using these fixtures run one after another on one worker, as without xdist:
# `agent_image` runs real external agents (aider, Codex CLI, Claude Code), process trees heavy
# on CPU and memory whose time limits two such runs side by side overshoot.
ONE_WORKER_FIXTURES = {"agent_image"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`, pyproject's addopts) tests are handed to the
    workers one by one. Tests using a fixture shared by a module or class (a built image, a
    browser, a model server, one sandbox) all run on one worker: the fixture is made as often
    as without xdist, and never twice at the same time (an image under one fixed tag, two
    model servers on two cores); so do tests using ONE_WORKER_FIXTURES. A test may name its own
    group: `pytest.mark.xdist_group`."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        heavy = sorted(set(info.names_closure if info else ()) & ONE_WORKER_FIXTURES)
        if heavy:
            item.add_marker(pytest.mark.xdist_group(heavy[0]))
            continue
        shared = sorted(
            f"{Path(d.func.__code__.co_filename).relative_to(config.rootpath)}::{d.argname}"
            for chain in (info.name2fixturedefs.values() if info else ())
            for d in chain
            if d.scope in ("module", "class", "package")
        )
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; dropped afterwards."""
    admin_url = normalize_url(PG_ADMIN_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any connection failure means "no server here"
        need("PostgreSQL", f"{PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}".splitlines()[0])
    name = f"nightcrew_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of its own (no tables at all), dropped afterwards: for
    tests of what processes do to a database they find empty."""
    admin_url = normalize_url(PG_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        need("PostgreSQL", f"{PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}".splitlines()[0])
    name = f"nightcrew_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nightcrew.db'}"
    url: str = request.getfixturevalue("pg_database")
    engine = make_engine(url)
    with engine.begin() as conn:  # every test starts from empty tables
        tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return result.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A real git repo with one commit on `main`."""
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# app\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    return repo
