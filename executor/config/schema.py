"""`nightcrew.yaml`: loading and validation.

Every error names the file, the key and the reason, e.g.
`nightcrew.yaml: repos.app.limits.max_turns: must be greater than 0 (got -1)`.
With no file and the working directory inside a git repo, that repo is the one repo."""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic import model_validator as _model_validator

from executor.config import crontime
from executor.config.defaults import (
    MODEL_IDLE_TIMEOUT_S,
    MODEL_OUTAGE_WINDOW_S,
    MODEL_REQUEST_TIMEOUT_S,
)
from executor.config.project import git_root

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "nightcrew-sandbox:latest"
# Agents with a preset (executor/agents/presets.py): installable into an image, run headless.
EXTERNAL_AGENTS = ("aider", "codex", "claude-code")
AgentKind = Literal["builtin", "aider", "codex", "claude-code", "command"]
# `network:` list entries: host:port, or `model` (the configured model endpoint).
_DESTINATION = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")
Positive = Annotated[float, Field(gt=0)]
# Money in config is read as Decimal: 0.1 + 0.2 must be 0.3 when budgets are compared.
Dollars = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
PerMillion = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """The configuration cannot be used; the message says file, key and reason."""


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: "chekcs" must not silently do nothing.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Sizes in limits: a whole number and a unit (k, m, g, t: powers of 1024). A bare number is
# refused: "2048" would be 2 KB to Docker and 2048 MB to whoever wrote it.
_SIZE = re.compile(r"(\d+)([kmgt])")
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def size_bytes(text: str) -> int:
    """`512m` → 536870912 (a size already validated by Limits)."""
    number, unit = _SIZE.fullmatch(text).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


def _size(key: str, value: object, low: str, high: str) -> str:
    """A size between `low` and `high`, normalised to lower case."""
    text = str(value).strip().lower()
    if text == "0":
        raise ValueError(f"{key} must be at least {low}; 0 is not a limit")
    if isinstance(value, bool) or not _SIZE.fullmatch(text):
        raise ValueError(f"{key} must look like 512m or 2g: a whole number and a unit k, m, g or t")
    if size_bytes(text) < size_bytes(low):
        raise ValueError(f"{key} must be at least {low}")
    if size_bytes(text) > size_bytes(high):
        raise ValueError(f"{key} must be at most {high}")
    return text


def _within(high: float, low: float | None = None, why: str = "") -> AfterValidator:
    """A finite number at most `high` and, given `low`, at least `low`; `why` the reason for
    the lower bound. (Without `low`, Field(gt=0) beside it keeps it positive.)"""

    def check(value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if low is not None and value < low:
            raise ValueError(f"must be at least {low:g}: {why}")
        if value > high:
            raise ValueError(f"must be at most {high:g}")
        return value

    return AfterValidator(check)


class Limits(_Strict):
    """Per-task limits. Every one is bounded on both sides: Docker reads a CPU quota or a PID
    limit of 0 as "no limit", and a typo must never mean "unlimited"."""

    max_turns: Annotated[int, Field(gt=0), _within(100_000)] = 60
    max_tokens: Annotated[int, Field(gt=0), _within(10_000_000_000)] = 2_000_000
    max_cost_usd: Annotated[float, Field(gt=0), _within(100_000)] = 5.0
    max_wall_minutes: Annotated[float, Field(gt=0), _within(10_080)] = 60  # a week
    command_timeout_s: Annotated[float, _within(86_400, 1, "a command needs time to start")] = 600
    memory: str = "2g"
    # 0.01 CPU is Docker's smallest quota (1 ms per 100 ms period).
    cpus: Annotated[float, _within(1024, 0.01, "Docker's smallest CPU quota")] = 2.0
    # A shell, git and the command itself need a few processes; 4194304 is Linux's pid_max.
    pids: Annotated[int, _within(4_194_304, 16, "a shell, git and a command need a few")] = 512
    # The task's workspace is a filesystem of this size (executor/sandbox/quota.py): a
    # runaway write fails the task instead of filling the host's disk.
    disk: str = "10g"

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> str:
        return _size("memory", value, "64m", "1t")  # below 64m git and a shell do not fit

    @field_validator("disk", mode="before")
    @classmethod
    def _disk(cls, value: object) -> str:
        return _size("disk", value, "64m", "64t")

    @property
    def memory_bytes(self) -> int:
        return size_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return size_bytes(self.disk)


class Review(_Strict):
    enabled: bool = True
    model: str | None = None  # default: the task's model
    max_rounds: Annotated[int, Field(ge=0)] = 2


FORGE_API = {"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4"}
FORGE_TOKEN_ENV = {"github": "GITHUB_TOKEN", "gitlab": "GITLAB_TOKEN"}


class Merge(_Strict):
    """How an approved task lands: merged here and pushed (merge, squash, ff), or through a
    pull request on a forge (`pull_request`), for teams whose base branch is protected."""

    policy: Literal["merge", "squash", "ff", "pull_request"] = "merge"
    delete_branch: bool = True
    push: bool = True  # push the base branch when the repo has a remote
    # pull_request only: the forge, its REST API (GitHub Enterprise: https://host/api/v3;
    # self-hosted GitLab: https://host/api/v4), the project ("owner/repo", "group/sub/proj"),
    # the environment variable holding the token (read on the host only), the forge's merge
    # method, and whether review comments on the PR reach the agent as nudges.
    forge: Literal["github", "gitlab"] | None = None
    api_url: str | None = None
    project: str | None = None
    token_env: str | None = None
    method: Literal["merge", "squash", "rebase"] = "merge"
    review_nudges: bool = False

    @_model_validator(mode="after")
    def _forge(self) -> Merge:
        if self.policy != "pull_request":
            if self.forge or self.project or self.api_url or self.token_env:
                raise ValueError("forge, project, api_url and token_env need policy: pull_request")
            return self
        if self.forge is None or not self.project:
            raise ValueError("policy: pull_request needs forge (github or gitlab) and project")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+", self.project):
            raise ValueError(f"project must look like owner/repo (got {self.project!r})")
        if self.api_url is not None and not re.match(r"https?://", self.api_url):
            raise ValueError("api_url must be an http(s) URL")
        return self

    @property
    def forge_api(self) -> str:
        assert self.forge is not None
        return (self.api_url or FORGE_API[self.forge]).rstrip("/")

    @property
    def forge_token_env(self) -> str:
        assert self.forge is not None
        return self.token_env or FORGE_TOKEN_ENV[self.forge]


class RepoConfig(_Strict):
    path: Path | None = None
    url: str | None = None
    base_branch: str = "main"
    image: str = DEFAULT_IMAGE
    setup: list[str] = []
    checks: list[str] = []
    review: Review = Review()
    allowed_paths: list[str] = ["**"]
    limits: Limits = Limits()
    merge: Merge = Merge()
    approvers: list[str] = []
    max_concurrent: Annotated[int, Field(gt=0)] | None = None  # tasks of this repo at once
    # false: no network; true: open; a list of host:port (or `model`): only those, through
    # nightcrew's allowlisting proxy (executor/sandbox/egress.py).
    network: bool | tuple[str, ...] = False
    read_only_root: bool = True
    agent: AgentKind = "builtin"
    agent_command: str | None = None
    # Host environment variables passed into the sandbox for an external agent only (its own
    # API key), to its process alone; nothing else from the host ever enters a sandbox.
    agent_env: list[str] = []

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError("must be false, true or a list of host:port (or model)")
        out = []
        for item in value:
            text = str(item).strip().lower()
            if text != "model":
                found = _DESTINATION.fullmatch(text)
                if not found or not 0 < int(found.group(2)) < 65536:
                    raise ValueError(
                        f"{item!r} is not host:port (e.g. api.openai.com:443) or model"
                    )
            out.append(text)
        return tuple(out)

    @_model_validator(mode="after")
    def _source(self) -> RepoConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path (a local git repo) or url (to clone)")
        if self.agent == "command" and not self.agent_command:
            raise ValueError("agent: command needs agent_command (the command to run)")
        if self.merge.policy == "pull_request" and self.merge.forge_token_env in self.agent_env:
            raise ValueError(
                f"agent_env lists {self.merge.forge_token_env}, the forge token: it stays on "
                "the host and never enters a sandbox"
            )
        return self


class Digest(_Strict):
    cron: str = "0 8 * * *"
    timezone: str = "UTC"
    channels: list[str] = []

    @_model_validator(mode="after")
    def _schedule(self) -> Digest:
        try:
            crontime.trigger(self.cron, self.timezone)
        except crontime.CronError as exc:
            raise ValueError(str(exc)) from None
        return self


class Budgets(_Strict):
    """Daily spending caps; a "day" is a calendar day in `digest.timezone`."""

    daily_usd: Dollars | None = None  # all repos together
    repo_daily_usd: dict[str, Dollars] = {}

    @property
    def any(self) -> bool:
        return self.daily_usd is not None or bool(self.repo_daily_usd)


class Price(_Strict):
    """A model's list price in USD per million tokens."""

    prompt: PerMillion
    completion: PerMillion


class Config(_Strict):
    repos: dict[str, RepoConfig]
    default_repo: str | None = None
    channels: dict[str, str] = {}  # Slack channel id -> repo name
    users: list[str] = []  # Slack users who may do anything at all; empty = everyone
    model: str | None = None
    base_url: str | None = None  # the OpenAI-compatible endpoint (OPENAI_BASE_URL wins)
    stream: bool = False  # stream completions (some gateways answer faster, or only so)
    # The model endpoint failing (5xx, 429, timeouts, refused connections): tasks wait this
    # long for it (one probe request at a time), then park for a person with their work kept.
    # 0: park at the first failure. NIGHTCREW_MODEL_OUTAGE_MINUTES wins.
    model_outage_minutes: Annotated[float, Field(ge=0), _within(7 * 24 * 60)] = (
        MODEL_OUTAGE_WINDOW_S / 60
    )
    # A hung request: streamed, no byte for this long; not streamed, no complete answer in
    # this long (NIGHTCREW_MODEL_IDLE_TIMEOUT_S, NIGHTCREW_MODEL_TIMEOUT_S win).
    model_idle_timeout_s: Annotated[float, _within(3600, 1, "a stream needs a moment")] = (
        MODEL_IDLE_TIMEOUT_S
    )
    model_timeout_s: Annotated[float, _within(86_400, 1, "a model needs time to answer")] = (
        MODEL_REQUEST_TIMEOUT_S
    )
    digest: Digest = Digest()
    budgets: Budgets = Budgets()
    prices: dict[str, Price] = {}  # model -> price; adds to and overrides the built-in table
    source: Path | None = Field(default=None, exclude=True)  # the file it came from

    @field_validator("repos")
    @classmethod
    def _some_repos(cls, repos: dict[str, RepoConfig]) -> dict[str, RepoConfig]:
        if not repos:
            raise ValueError("no repos; add at least one (a name with a path or url)")
        return repos

    @_model_validator(mode="after")
    def _references(self) -> Config:
        names = set(self.repos)
        if self.default_repo is not None and self.default_repo not in names:
            raise ValueError(f"default_repo {self.default_repo!r} is not one of the repos")
        for channel, repo in self.channels.items():
            if repo not in names:
                raise ValueError(f"channels.{channel}: {repo!r} is not one of the repos")
        for repo in self.budgets.repo_daily_usd:
            if repo not in names:
                raise ValueError(f"budgets.repo_daily_usd: {repo!r} is not one of the repos")
        return self

    def repo_for(self, name: str | None = None, *, channel: str | None = None) -> str:
        """The repo a new task goes to: named, else the channel's, else the default."""
        if name is not None:
            if name not in self.repos:
                known = ", ".join(sorted(self.repos))
                raise ConfigError(f"unknown repo {name!r}; known repos: {known}")
            return name
        if channel is not None and channel in self.channels:
            return self.channels[channel]
        if self.default_repo is not None:
            return self.default_repo
        if len(self.repos) == 1:
            return next(iter(self.repos))
        known = ", ".join(sorted(self.repos))
        raise ConfigError(f"several repos and no default_repo; name one of: {known}")


def load_config(path: Path, *, cwd: Path | None = None) -> Config:
    """Read and validate `path`; with no such file, fall back to the git repo around `cwd`."""
    if not path.exists():
        return _implicit_config(cwd or Path.cwd(), path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys (repos:, channels:, ...)")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    return _resolve_paths(config, path)


class ConfigWatch:
    """The config as the file says now, for a long-running executor: re-read when the file
    changes (a raised budget frees waiting tasks without a restart). An edit that does not
    validate is logged and the last good config is kept: a typo must not stop the fleet."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path, self.config = path, config
        self._stamp = self._stat()
        self._broken = False

    def __call__(self) -> Config:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.config = load_config(self.path)
            except ConfigError as exc:
                self._broken = True
                log.error(
                    "%s changed but is not valid; keeping the previous config: %s", self.path, exc
                )
            else:
                if self._broken:  # the error above stays on screen: say it is over
                    log.warning("%s is valid again; using it", self.path)
                self._broken = False
        return self.config

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # gone: keep what was loaded (an implicit config stays implicit)
        return st.st_mtime_ns, st.st_size


def _describe(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            reason = "unknown key (check the spelling; `nightcrew init` writes a commented file)"
        elif err["type"] == "missing":
            reason = "required key is missing"
        else:
            reason = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                reason += f" (got {err['input']!r})"
        lines.append(f"{path}: {key}: {reason}")
    return "\n".join(lines)


def _resolve_paths(config: Config, path: Path) -> Config:
    base = path.resolve().parent
    repos: dict[str, RepoConfig] = {}
    for name, repo in config.repos.items():
        if repo.path is not None:
            local = (base / repo.path.expanduser()).resolve()
            if not git_root(local):
                raise ConfigError(f"{path}: repos.{name}.path: {local} is not a git repository")
            repo = repo.model_copy(update={"path": local})
        repos[name] = repo
    return config.model_copy(update={"repos": repos, "source": path})


def _implicit_config(cwd: Path, wanted: Path) -> Config:
    root = git_root(cwd)
    if root is None:
        raise ConfigError(
            f"{wanted}: no such file, and {cwd} is not inside a git repository; "
            "run `nightcrew init` inside a repo, or set NIGHTCREW_CONFIG"
        )
    repo = RepoConfig(path=root, base_branch=current_branch(root))
    return Config(repos={repo_name(root): repo})


def repo_name(root: Path) -> str:
    """A repo's name from its folder, safe to type in a command and to use as a YAML key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-") or "repo"


def current_branch(root: Path) -> str:
    from git import Repo

    repo = Repo(root)
    try:
        return repo.active_branch.name
    except TypeError:  # detached HEAD
        return "main"
