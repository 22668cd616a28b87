"""`nightcrew doctor`: is everything nightcrew needs in place? One small function per part
(config, database, Docker, sandbox images, model endpoint, Slack), each returning a `Result`
that says what it found and, when something is wrong, how to fix it; `diagnose` runs them
all in order."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import docker
import yaml
from docker.errors import APIError, ContainerError, DockerException, ImageNotFound
from rich.text import Text
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from bot.links import ensure_secret, secret_mode_ok, secret_path
from bot.slack.app import SLACK_API, SlackEnv
from executor.agents.llm import DEFAULT_BASE_URL, LLMClient, LLMRejected, LLMUnavailable
from executor.config.redact import redact
from executor.config.schema import DEFAULT_IMAGE, Config, ConfigError, RepoConfig, load_config
from executor.config.settings import Settings
from executor.forge.connect import NoToken, forge_for
from executor.forge.http import ForgeError
from executor.git import quota
from executor.sandbox.container import SandboxError
from executor.sandbox.image import SANDBOX_DIR, ensure_image
from executor.sandbox.recipe import freshness
from storage import migrate, outbox
from storage.db import make_engine, normalize_url, reading
from storage.models import utcnow

Status = Literal["ok", "fail", "skip"]
# Shipped inside the package, so `nightcrew slack-manifest` works from any install.
MANIFEST = Path(__file__).resolve().parent.parent / "slack" / "manifest.yml"
LLM_TIMEOUT_S = 30.0  # a cold local model may take a while for its first token
GIVEN_UP_DAYS = 7.0  # given-up Slack messages are reported for a week: seen after a weekend


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def check_config(path: Path, *, cwd: Path | None = None) -> tuple[Result, Config | None]:
    try:
        config = load_config(path, cwd=cwd)
    except ConfigError as exc:
        fix = (
            "correct the keys named above (`nightcrew init --force` writes a commented example "
            "and keeps yours as nightcrew.yaml.bak)"
            if path.exists()
            else "run `nightcrew init` in the repo, or point NIGHTCREW_CONFIG at a nightcrew.yaml"
        )
        return Result("config", "fail", str(exc), fix), None
    where = str(config.source) if config.source else "the git repo here (no nightcrew.yaml)"
    return Result("config", "ok", f"{where}: repos {', '.join(config.repos)}"), config


def check_database(url: str) -> Result:
    """Connect and compare the tables and columns with what this version expects."""
    url = normalize_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return Result("database", "ok", f"{url}: not there yet; created at first start")
    try:
        engine = make_engine(url, create=False)
    except Exception as exc:  # a malformed URL or a missing driver: say so, not a traceback
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Result(
            "database",
            "fail",
            f"{_safe(url)}: {reason}",
            "check NIGHTCREW_DATABASE_URL (sqlite:///PATH or postgresql://USER:PASS@HOST/DB)",
        )
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            tables = set(inspector.get_table_names())
            missing = []
            for table in SQLModel.metadata.sorted_tables:
                if table.name not in tables:
                    missing.append(table.name)
                    continue
                have = {c["name"] for c in inspector.get_columns(table.name)}
                missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
            revision = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if "alembic_version" in tables
                else None
            )
    except Exception as exc:  # any failure to connect or read the catalogue
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Result(
            "database",
            "fail",
            f"{_safe(url)}: {reason}",
            "is the server running and the URL (NIGHTCREW_DATABASE_URL) right?",
        )
    finally:
        engine.dispose()
    newest = migrate.head()
    if revision is not None and not migrate.is_known(revision):
        return Result(
            "database",
            "fail",
            f"{_safe(url)}: schema at migration {revision}, which this nightcrew does not know "
            f"(it knows up to {newest}): a newer nightcrew migrated it",
            "install the newer nightcrew here too",
        )
    if revision != newest and (revision is not None or "task" in tables):
        # Behind (or made before migrations existed): the next start migrates it.
        at = f"migration {revision}" if revision else "no migration (made before migrations)"
        return Result(
            "database",
            "ok",
            f"{_safe(url)}: connected; schema at {at}, migrated to {newest} at the next start",
        )
    if not tables - {"alembic_version"}:
        return Result("database", "ok", f"{_safe(url)}: connected, empty; created at first start")
    if missing:
        return Result(
            "database",
            "fail",
            f"{_safe(url)}: schema is behind: missing {', '.join(missing)}",
            "start `nightcrew up` or `nightcrew executor` once with this version; it creates them",
        )
    at = f" (migration {revision})" if revision else ""
    return Result("database", "ok", f"{_safe(url)}: connected, schema complete{at}")


def check_deliveries(url: str, *, days: float = GIVEN_UP_DAYS) -> Result:
    """Slack messages the notifier gave up on in the last `days` (refused by Slack, out of
    attempts, or rate limited past NIGHTCREW_SLACK_MAX_AGE_H): people missed them."""
    url = normalize_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return Result("slack deliveries", "skip", "no database yet")
    try:
        engine = make_engine(url, create=False)
        try:
            with reading(engine) as session:
                rows = outbox.given_up(session, since=utcnow() - timedelta(days=days))
        finally:
            engine.dispose()
    except Exception as exc:  # no database or an old schema: the database check says so
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Result("slack deliveries", "skip", f"cannot read the outbox: {reason}")
    if not rows:
        return Result("slack deliveries", "ok", f"none given up in the last {days:g} days")
    newest = rows[0]
    about = f"task {newest.task_id}" if newest.task_id else newest.kind
    tasks = sorted({r.task_id for r in rows if r.task_id is not None})
    shown = ", ".join(str(t) for t in tasks[:10]) + (" …" if len(tasks) > 10 else "")
    return Result(
        "slack deliveries",
        "fail",
        f"{len(rows)} Slack message(s) given up in the last {days:g} days"
        + (f" (tasks {shown})" if tasks else "")
        + f"; newest: {about} ({newest.kind}): {newest.last_error}",
        "`nightcrew show ID` has each task's slack_error; if Slack was rate limiting for "
        "longer, raise NIGHTCREW_SLACK_MAX_AGE_H (hours, default 24)",
    )


def check_docker() -> tuple[Result, docker.DockerClient | None]:
    host = os.environ.get("DOCKER_HOST") or "the local socket"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        version = client.version().get("Version", "?")
    except DockerException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Result(
            "docker",
            "fail",
            f"no Docker engine at {host}: {reason}",
            "start Docker, or set DOCKER_HOST to a reachable engine (in a container: mount "
            "/var/run/docker.sock, which is root-equivalent, or use a remote DOCKER_HOST)",
        ), None
    return Result("docker", "ok", f"engine {version} at {host}"), client


def check_disk_quota() -> Result:
    """Can this executor give each task's workspace a filesystem of its own (the disk quota,
    nosuid, nodev)? Without it tasks still run, but a runaway write can fill the host disk."""
    why = quota.available()
    if why is None:
        return Result(
            "disk quota", "ok", "each workspace is a loop-mounted filesystem of limits.disk"
        )
    return Result("disk quota", "skip", f"not enforced: {why} (a runaway write can fill the disk)")


def check_image(client: docker.DockerClient, image: str, *, context: Path = SANDBOX_DIR) -> Result:
    """Present, and for ours (the default image, or one built from `context`) built from
    the current recipe (executor/sandbox/recipe.py)."""
    ours = image == DEFAULT_IMAGE or context != SANDBOX_DIR
    try:
        found = client.images.get(image)
    except ImageNotFound:
        if ours:
            fix = "`nightcrew doctor --fix` builds it (sandbox/build-image.sh without a registry)"
        else:
            fix = f"`nightcrew doctor --fix` pulls it, or `docker pull {image}`"
        return Result(f"image {image}", "fail", "not on the engine", fix)
    except DockerException as exc:
        return Result(f"image {image}", "fail", str(exc).splitlines()[0], "is the engine healthy?")
    state = freshness(client, image, context)
    if ours and state.stale:
        fix = (
            "`nightcrew doctor --fix` rebuilds it (the executor also does before its first "
            "task), or `sandbox/build-image.sh` as root without a registry"
        )
        return Result(f"image {image}", "fail", state.describe(image), fix)
    size = (found.attrs.get("Size") or 0) / 1e6
    return Result(f"image {image}", "ok", f"present ({found.short_id}, {size:.0f} MB)")


# What the executor runs inside every sandbox: a POSIX shell for every command (sh -c), the
# command's time limit (timeout), the agent's git and the process listing the tools use (ps).
NEEDED_TOOLS = ("git", "ps", "timeout")
TOOLS_TIMEOUT_S = 60


def check_tools(client: docker.DockerClient, image: str) -> Result:
    """Start the image once (no network) and look for the tools the executor needs."""
    probe = "for t in " + " ".join(NEEDED_TOOLS) + "; do command -v $t >/dev/null || echo $t; done"
    name = f"tools in {image}"
    try:
        output = client.containers.run(
            image,
            ["sh", "-c", probe],
            entrypoint=[],
            network_disabled=True,
            remove=True,
            stdout=True,
            stderr=True,
        )
    except ContainerError as exc:
        return Result(name, "fail", f"the probe failed: {exc}", "rebuild or fix the image")
    except APIError as exc:  # `sh` itself is missing: the container cannot start
        detail = f"no shell (sh) to run commands in: {exc.explanation or exc}"
        return Result(name, "fail", detail, "use an image with /bin/sh, git, ps and timeout")
    except DockerException as exc:
        return Result(name, "fail", str(exc).splitlines()[0], "is the engine healthy?")
    missing = output.decode("utf-8", "replace").split()
    if missing:
        return Result(
            name,
            "fail",
            f"missing: {', '.join(missing)}",
            "install them in the image (for the default image: sandbox/packages.txt, then "
            "`nightcrew doctor --fix`)",
        )
    return Result(name, "ok", "sh, " + ", ".join(NEEDED_TOOLS))


def check_agent(client: docker.DockerClient, image: str, agent: str) -> Result:
    """A repo's external agent must be in its image: the image's label says so (images from
    `nightcrew image build`), else its binary is looked for in a throwaway container."""
    from executor.agents.presets import PRESETS
    from executor.sandbox.agent_image import agents_in

    name, binary = f"agent {agent} in {image}", PRESETS[agent].binary
    build = f"`nightcrew image build --agents {agent}` and set image: to the tag it prints"
    listed = agents_in(client, image)
    if listed is None:
        return Result(name, "skip", "the image is missing (see above)")
    if agent in listed:
        return Result(name, "ok", "installed (image label)")
    try:
        found = client.containers.run(
            image,
            ["sh", "-c", f"command -v {binary}"],
            network_mode="none",
            remove=True,
            entrypoint=[],
        )
    except DockerException:
        return Result(name, "fail", f"`{binary}` is not in the image", build)
    return Result(name, "ok", f"found at {found.decode().strip()}")


def provide_image(
    client: docker.DockerClient, image: str, *, context: Path = SANDBOX_DIR
) -> Result:
    """The fix for a missing or stale image: ours is built (registry-free when we are root
    and have debootstrap), others are pulled."""
    try:
        ensure_image(client, image, context=context)
    except SandboxError as exc:
        return Result(f"image {image}", "fail", str(exc), "build or pull it by hand, see README")
    return check_image(client, image, context=context)


def check_llm(base_url: str, api_key: str | None, model: str | None) -> Result:
    """One tiny real request to the endpoint."""
    if not model:
        return Result("model", "fail", "no model set", "set NIGHTCREW_MODEL or `model:`")
    try:
        client = LLMClient(
            base_url=base_url, api_key=api_key, model=model, timeout=LLM_TIMEOUT_S, max_attempts=1
        )
    except ValueError as exc:
        return Result("model", "fail", str(exc), "set OPENAI_BASE_URL to the API's /v1 URL")
    started = time.monotonic()
    try:
        with client:
            client.complete(
                [{"role": "user", "content": "Reply with the word OK."}],
                options={"max_tokens": 5},
            )
    except LLMRejected as exc:
        fix = {
            401: "check OPENAI_API_KEY",
            403: "check OPENAI_API_KEY and its permissions",
            404: "check the model name (NIGHTCREW_MODEL) and that the URL ends in /v1",
        }.get(exc.status_code, "see the server's message above")
        return Result("model", "fail", str(exc), fix)
    except LLMUnavailable as exc:
        return Result(
            "model",
            "fail",
            str(exc),
            "is the server up, and is OPENAI_BASE_URL an OpenAI-compatible API (…/v1)?",
        )
    ms = (time.monotonic() - started) * 1000
    return Result("model", "ok", f"{model} at {redact(base_url)} answered in {ms:.0f} ms")


# The bot scopes of manifest.yml, for an install without the source tree (tests keep the two
# equal); the manifest, when present, is the truth.
BOT_SCOPES = (
    "app_mentions:read",
    "channels:history",
    "groups:history",
    "im:history",
    "im:write",
    "chat:write",
    "commands",
    "reactions:write",
    "users:read",
    "metadata.message:read",
    "files:write",
    "files:read",
)


def manifest_scopes(path: Path = MANIFEST) -> list[str]:
    """The bot scopes the app needs: manifest.yml's, or BOT_SCOPES without the source tree."""
    if not path.is_file():
        return list(BOT_SCOPES)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return list(data["oauth_config"]["scopes"]["bot"])


def check_slack(
    token: str | None,
    *,
    api_url: str,
    app_token: str | None,
    signing_secret: str | None,
    wanted: list[str],
) -> Result:
    """auth.test with the bot token, and its granted scopes against the manifest's."""
    if not token:
        return Result("slack", "skip", "not configured (SLACK_BOT_TOKEN unset): terminal only")
    if not app_token and not signing_secret:
        return Result(
            "slack",
            "fail",
            "neither SLACK_APP_TOKEN (Socket Mode) nor SLACK_SIGNING_SECRET (HTTP mode) is set",
            "create an app-level token with connections:write and set SLACK_APP_TOKEN",
        )
    client = WebClient(token=token, base_url=api_url, retry_handlers=[], timeout=15)
    try:
        answer = client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error") or f"HTTP {exc.response.status_code}"
        return Result(
            "slack",
            "fail",
            f"auth.test: {error}",
            "SLACK_BOT_TOKEN is wrong or revoked: copy the Bot User OAuth Token (xoxb-…) "
            "from the app's OAuth & Permissions page",
        )
    except OSError as exc:
        return Result("slack", "fail", f"cannot reach {api_url}: {exc}", "check the network")
    granted = {
        s.strip() for s in (answer.headers.get("x-oauth-scopes") or "").split(",") if s.strip()
    }
    who = f"{answer.get('user')} in {answer.get('team')}"
    missing = [s for s in wanted if s not in granted]
    if missing:
        return Result(
            "slack",
            "fail",
            f"{who}: missing scopes {', '.join(missing)}",
            "add them (`nightcrew slack-manifest` lists them; OAuth & Permissions → Scopes) "
            "and reinstall the app",
        )
    return Result("slack", "ok", f"{who}; all {len(wanted)} scopes of manifest.yml granted")


def check_web_secret(home: Path) -> Result:
    """The secret the page links are signed with (bot/links.py): made now if missing, and
    readable by nobody but its owner."""
    try:
        ensure_secret(home)
    except (OSError, ValueError) as exc:
        return Result("web links", "fail", str(exc), f"remove {secret_path(home)} and run again")
    if not secret_mode_ok(home):
        path = secret_path(home)
        return Result("web links", "fail", f"{path} is readable by others", f"chmod 600 {path}")
    return Result("web links", "ok", f"signing secret in {secret_path(home)} (0600)")


def check_forge(name: str, repo: RepoConfig, environ: Mapping[str, str] | None = None) -> Result:
    """A `pull_request` repo's token: set, accepted, and allowed to push and open PRs; says
    which scope (or permission) is missing."""
    merge = repo.merge
    label = f"forge {name} ({merge.forge} {merge.project})"
    try:
        with forge_for(repo, environ) as forge:
            access = forge.check_access()
    except NoToken as exc:
        return Result(label, "fail", str(exc), f"export {merge.forge_token_env}=<a token>")
    except ForgeError as exc:
        return Result(label, "fail", f"{merge.forge_api}: {exc}", "check api_url and the network")
    if not access.ok:
        scopes = ", ".join(access.missing)
        return Result(label, "fail", access.detail, f"give the token: {scopes}")
    return Result(label, "ok", access.detail)


def diagnose(
    env: Settings,
    *,
    provide: Callable[[str], bool] = lambda image: False,
    report: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """Every check, in order, each reported as soon as it is known; `provide(image)` says
    whether to build or pull a missing image now."""
    results: list[Result] = []

    def add(result: Result) -> None:
        results.append(result)
        report(result)

    result, config = check_config(env.config_path)
    add(result)
    add(check_database(env.db_url))
    add(check_deliveries(env.db_url))
    result, client = check_docker()
    add(result)
    add(check_disk_quota())
    for image in sorted({repo.image for repo in config.repos.values()}) if config else []:
        if client is None:
            add(Result(f"image {image}", "skip", "no Docker engine to look in"))
            continue
        result = check_image(client, image)
        if result.failed and provide(image):
            result = provide_image(client, image)
        add(result)
        if not result.failed:
            add(check_tools(client, image))
    external = {(r.image, r.agent) for r in config.repos.values()} if config else set()
    for image, agent in sorted(external):
        if agent not in ("builtin", "command") and client is not None:
            add(check_agent(client, image, agent))
    base_url = env.openai_base_url or (config.base_url if config else None) or DEFAULT_BASE_URL
    add(check_llm(base_url, env.openai_api_key, env.model or (config and config.model)))
    for name, repo in sorted(config.repos.items()) if config else []:
        if repo.merge.policy == "pull_request":
            add(check_forge(name, repo))
    slack = SlackEnv.from_env()
    add(
        check_slack(
            slack.bot_token if slack else None,
            api_url=slack.api_url if slack else SLACK_API,
            app_token=slack.app_token if slack else None,
            signing_secret=slack.signing_secret if slack else None,
            wanted=manifest_scopes(),
        )
    )
    add(check_web_secret(env.home))
    return results


def render(result: Result) -> Text:
    marks = {"ok": "[green]✓[/green]", "fail": "[red]✗[/red]", "skip": "[dim]-[/dim]"}
    line = Text.from_markup(f"{marks[result.status]} [bold]{result.name}[/bold]: ")
    line.append(result.detail)
    if result.failed and result.fix:
        line.append("\n    ").append_text(Text.from_markup("[yellow]fix:[/yellow] "))
        line.append(result.fix)
    return line


def summary(results: list[Result]) -> Text:
    failed = sum(r.failed for r in results)
    if failed:
        return Text.from_markup(f"[red]{failed} problem(s) found[/red]")
    return Text.from_markup("[green]all checks passed[/green]")


def _safe(url: str) -> str:
    """The URL without its password, for output."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
