"""What every command is composed from, made once per process and handed to each part:
the settings (environment), the database engine, nightcrew.yaml, the signer of the pages'
links, the local user the terminal acts as, and the model endpoint."""

from __future__ import annotations

import contextlib
import getpass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from bot.actions import ActionError
from bot.links import Signer
from executor.config.project import find_project
from executor.config.schema import Config, ConfigError, load_config
from executor.config.settings import Settings
from storage.db import make_engine

if TYPE_CHECKING:
    from executor.agents.llm import LLMClient


NOT_IN_A_PROJECT = (
    "not in a nightcrew project: no nightcrew.yaml or .nightcrew/ here or above, and not "
    "inside a git repository; cd into your project (`nightcrew init` makes one in a repo), "
    "or set NIGHTCREW_HOME or NIGHTCREW_DATABASE_URL"
)


@cache
def project() -> Path | None:
    """The project this command works in (`executor.config.project`), found once."""
    return find_project(Path.cwd())


@cache
def settings() -> Settings:
    return Settings.of_project(project())


@cache
def engine() -> Engine:
    """The project's database. Outside any project, an error rather than a new empty
    database in whatever folder the command ran in."""
    env = settings()
    if project() is None and env.database_url is None and "home" not in env.model_fields_set:
        raise ActionError(NOT_IN_A_PROJECT)
    _ignored_by_git(env.home)
    return make_engine(env.db_url)


def _ignored_by_git(home: Path) -> None:
    """The state folder tells git to ignore it (as a virtualenv does), so a repo where
    `nightcrew up` ran without `init` does not show .nightcrew/ as new files."""
    marker = home / ".gitignore"
    with contextlib.suppress(OSError):  # a read-only home (PostgreSQL elsewhere) is no error
        home.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text("# nightcrew's state: never committed\n*\n", encoding="utf-8")


@cache
def config() -> Config:
    return load_config(settings().config_path)


def local_user() -> str:
    """The CLI acts as the local user."""
    return f"local:{getpass.getuser()}"


def signer() -> Signer:
    return Signer.from_settings(settings())


def model_waits(cfg: Config, env: Settings) -> dict[str, float]:
    """The model endpoint's outage window and timeouts: the environment's, else the file's."""

    def pick(from_env: float | None, from_file: float) -> float:
        return from_file if from_env is None else from_env

    return {
        "outage_window": 60 * pick(env.model_outage_minutes, cfg.model_outage_minutes),
        "idle_timeout": pick(env.model_idle_timeout_s, cfg.model_idle_timeout_s),
        "timeout": pick(env.model_timeout_s, cfg.model_timeout_s),
    }


def model_name(cfg: Config, env: Settings) -> str:
    """The model the environment, else nightcrew.yaml, names; `ConfigError` when neither does."""
    model = env.model or cfg.model
    if not model:
        raise ConfigError("no model: set NIGHTCREW_MODEL, or `model:` in nightcrew.yaml")
    return model


def llm_client(cfg: Config, env: Settings) -> LLMClient:
    """A client of the model endpoint, the same for the executor's agents and the planner."""
    from executor.agents.llm import DEFAULT_BASE_URL, LLMClient  # its imports: when needed

    return LLMClient(
        base_url=env.openai_base_url or cfg.base_url or DEFAULT_BASE_URL,
        api_key=env.openai_api_key,
        model=model_name(cfg, env),
        stream=cfg.stream,
        **model_waits(cfg, env),
    )
