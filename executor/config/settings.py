"""Process settings from the environment and the project's `.env` file; the project's
`.nightcrew/` and `nightcrew.yaml` unless the environment names others."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from executor.config.defaults import IDLE_POLL_S
from executor.config.project import CONFIG_FILE, HOME_DIR, find_project
from storage.db import sqlite_url
from storage.defaults import HEARTBEAT_TIMEOUT_S


class Settings(BaseSettings):
    # No populate_by_name: it would read the field names too, so $HOME would become NIGHTCREW_HOME.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    home: Path = Field(Path(".nightcrew"), validation_alias="NIGHTCREW_HOME")
    database_url: str | None = Field(None, validation_alias="NIGHTCREW_DATABASE_URL")
    config_path: Path = Field(Path("nightcrew.yaml"), validation_alias="NIGHTCREW_CONFIG")
    openai_base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL"))
    openai_api_key: str | None = Field(None, validation_alias="OPENAI_API_KEY")
    model: str | None = Field(None, validation_alias="NIGHTCREW_MODEL")
    # How long a silent worker keeps its tasks before others take them over.
    heartbeat_timeout_s: float = Field(
        HEARTBEAT_TIMEOUT_S, gt=0, validation_alias="NIGHTCREW_HEARTBEAT_TIMEOUT_S"
    )
    # How often an idle worker looks for work even without a wake-up (storage.wakeup).
    idle_poll_s: float = Field(IDLE_POLL_S, gt=0, le=3600, validation_alias="NIGHTCREW_IDLE_POLL_S")

    # Every server a process opens has a host and a port, here and as options of `up`, `bot`
    # and `executor` (`--host`, `--admin-port`, …; docs/CLI.md). Loopback by default; the
    # Docker image sets the hosts to 0.0.0.0.
    # The Slack HTTP server (HTTP mode's /slack/events, and /healthz) of `up` and `bot`.
    host: str = Field("127.0.0.1", validation_alias="NIGHTCREW_HOST")
    port: int = Field(3000, ge=0, le=65535, validation_alias="NIGHTCREW_PORT")
    # The model endpoint's outage window and timeouts; unset: nightcrew.yaml's (see there).
    model_outage_minutes: float | None = Field(
        None, ge=0, le=7 * 24 * 60, validation_alias="NIGHTCREW_MODEL_OUTAGE_MINUTES"
    )
    model_idle_timeout_s: float | None = Field(
        None, ge=1, le=3600, validation_alias="NIGHTCREW_MODEL_IDLE_TIMEOUT_S"
    )
    model_timeout_s: float | None = Field(
        None, ge=1, le=86_400, validation_alias="NIGHTCREW_MODEL_TIMEOUT_S"
    )

    # /healthz and /metrics of `up`, `bot` and `executor`; unset or 0: no admin port.
    admin_port: int | None = Field(None, ge=0, le=65535, validation_alias="NIGHTCREW_ADMIN_PORT")
    # Loopback by default: metrics name repos and costs. A container sets 0.0.0.0.
    admin_host: str = Field("127.0.0.1", validation_alias="NIGHTCREW_ADMIN_HOST")

    # The web pages (task pages, the review queue) of `up` and `bot`: loopback by default, a
    # reverse proxy or tunnel publishes them; NIGHTCREW_PUBLIC_URL is the address people
    # reach (what links say). Port 0 picks a free one; -1 serves no pages.
    web_host: str = Field("127.0.0.1", validation_alias="NIGHTCREW_WEB_HOST")
    web_port: int = Field(8780, ge=-1, le=65535, validation_alias="NIGHTCREW_WEB_PORT")
    public_url: str | None = Field(None, validation_alias="NIGHTCREW_PUBLIC_URL")
    # How long a page link works: a week covers a review that waits over a weekend.
    link_ttl_days: float = Field(7.0, gt=0, le=366, validation_alias="NIGHTCREW_LINK_TTL_DAYS")
    # How long a Slack message that Slack keeps rate limiting is retried before it is given up
    # (a warning, a metric, `nightcrew doctor`): a day outlasts any storm Slack has had.
    slack_max_age_h: float = Field(24.0, gt=0, validation_alias="NIGHTCREW_SLACK_MAX_AGE_H")

    # A text file attached to a reply in a task's thread reaches the agent up to this size.
    slack_file_max_bytes: int = Field(
        100_000, ge=1, le=10_000_000, validation_alias="NIGHTCREW_SLACK_FILE_MAX_BYTES"
    )

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.home)

    @classmethod
    def of_project(cls, project: Path | None) -> Settings:
        """The settings of a command that works in `project` (None: outside any, when the
        defaults stay relative to the working directory)."""
        if project is None:
            return cls()
        found = cls(_env_file=project / ".env")  # type: ignore[call-arg]
        # Relative to where the command runs (`nightcrew.yaml`, `../../nightcrew.yaml`): what
        # messages show; the working folder does not change during a process.
        up = Path(os.path.relpath(project))
        defaults = {"home": up / HOME_DIR, "config_path": up / CONFIG_FILE}
        unset = {k: v for k, v in defaults.items() if k not in found.model_fields_set}
        return found.model_copy(update=unset)


def here() -> Settings:
    """The settings of a process started in the working directory's project."""
    return Settings.of_project(find_project(Path.cwd()))
