"""The `nightcrew` command in-process through typer's runner, in a real git repo: the `cli`
fixture (same code, same database as a real run, fast). Registered in the root conftest.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from storage.db import make_engine, sqlite_url, transaction
from storage.models import Nudge, Outbox, Task, TaskEvent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def fresh_composition() -> None:
    """The CLI caches settings, config and engine per process; each call here is a new
    'process' as far as they are concerned."""
    from bot.cli import composition  # here: the CLI's imports cost seconds in other tests

    if composition.engine.cache_info().currsize:
        composition.engine().dispose()
    for cached in (
        composition.project,
        composition.settings,
        composition.config,
        composition.engine,
    ):
        cached.cache_clear()
    forget_console_logging()


def forget_console_logging() -> None:
    """A command's console logging (bot/terminal/noise.py) writes to CliRunner's stderr,
    closed once the command returns: left on the root logger, a later test's log line
    was a "Logging error"."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "nightcrew", False)]:
        root.removeHandler(handler)


@dataclass
class Cli:
    repo: Path
    home: Path
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *args: str, cwd: Path | None = None, found: bool = False) -> Result:
        """`found`: no NIGHTCREW_HOME, so the command finds its project from `cwd`."""
        self.monkeypatch.chdir(cwd or self.repo)
        if found:
            self.monkeypatch.delenv("NIGHTCREW_HOME", raising=False)
        else:
            self.monkeypatch.setenv("NIGHTCREW_HOME", str(self.home))
        self.monkeypatch.setenv("COLUMNS", "200")
        self.monkeypatch.delenv("NIGHTCREW_CONFIG", raising=False)
        self.monkeypatch.delenv("NIGHTCREW_DATABASE_URL", raising=False)
        fresh_composition()
        from typer.testing import CliRunner

        from bot import cli as cli_module

        result = CliRunner().invoke(cli_module.app, list(args))
        forget_console_logging()  # the "process" ended
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(self, *args: str, code: int = 1) -> str:
        """Run a command that must be refused, and check it wrote nothing."""
        before = self.snapshot()
        result = self(*args)
        assert result.returncode == code, (result.stdout, result.stderr)
        assert self.snapshot() == before, "a refused command wrote to the database"
        return result.stderr

    def snapshot(self) -> tuple:
        engine = make_engine(sqlite_url(self.home))
        with transaction(engine) as s:
            tasks = [t.model_dump() for t in s.exec(select(Task).order_by(Task.id)).all()]
            counts = [
                s.exec(select(func.count()).select_from(m)).one()
                for m in (TaskEvent, Nudge, Outbox)
            ]
        engine.dispose()
        return tasks, counts


@pytest.fixture
def cli(git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    yield Cli(git_repo, tmp_path / "home", monkeypatch)
    fresh_composition()


_fresh_composition = fresh_composition  # its name in tests/test_cli.py
