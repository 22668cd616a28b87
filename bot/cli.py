"""The `nightcrew` command: the terminal front end and the composition root."""

from __future__ import annotations

import errno
import getpass
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from sqlalchemy import Engine, func
from sqlmodel import select

from bot import actions
from bot.actions import ActionError, Outcome
from bot.links import Signer
from bot.terminal import records, render
from bot.terminal.output import Output
from executor.config.redact import redact
from executor.config.schema import (
    DEFAULT_IMAGE,
    Config,
    ConfigError,
    ConfigWatch,
    current_branch,
    git_root,
    load_config,
    repo_name,
)
from executor.config.settings import Settings
from executor.config.template import ENV_EXAMPLE, render_config
from storage.db import make_engine, transaction
from storage.errors import StorageError
from storage.lifecycle import WORKING, IllegalTransition, State
from storage.models import Priority, Task, utcnow
from storage.tasks import events, get_task, list_tasks, nudges
from storage.text import clean

if TYPE_CHECKING:
    from bot.slack.app import SlackEnv
    from bot.slack.notifier import Tunables as NotifierTunables

app = typer.Typer(
    name="nightcrew",
    help="Run a fleet of AI coding agents in Docker sandboxes; steer them from Slack or here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
out = Output(Console(highlight=False))  # tables and colour on a terminal, plain lines in a pipe
err = Console(stderr=True, highlight=False)


def main() -> None:
    app()


@app.callback()
def _everywhere(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        envvar="NIGHTCREW_VERBOSE",
        help="Also show the libraries' warnings and notes (before the command: nightcrew -v up).",
    ),
) -> None:
    """Run a fleet of AI coding agents in Docker sandboxes; steer them from Slack or here."""
    from bot.terminal import noise

    noise.configure(verbose)


# --- composition -------------------------------------------------------------------------


@cache
def settings() -> Settings:
    return Settings()


@cache
def engine() -> Engine:
    return make_engine(settings().db_url)


@cache
def config() -> Config:
    return load_config(settings().config_path)


def local_user() -> str:
    """The CLI acts as the local user."""
    return f"local:{getpass.getuser()}"


# Every server a command opens, with its options and environment variables (docs/CLI.md).
ADMIN_OPTION = "--admin-port (NIGHTCREW_ADMIN_PORT)"
WEB_OPTION = "--web-port (NIGHTCREW_WEB_PORT; -1: no pages)"
SLACK_OPTION = "--port (NIGHTCREW_PORT)"


def addresses(**given: object) -> None:
    """The command line's addresses over the environment's (`Settings`: NIGHTCREW_HOST,
    NIGHTCREW_PORT, NIGHTCREW_ADMIN_HOST, …); None: not given."""
    env = settings()
    for name, value in given.items():
        if value is not None:
            setattr(env, name, value)


def cannot_listen(what: str, host: str, port: int, option: str, exc: OSError) -> ActionError:
    """One clear line for a server that cannot open its port: which, why, what to change."""
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use (another nightcrew, or another program)"
    else:
        why = exc.strerror or str(exc)
    return ActionError(f"cannot serve {what} on {host}:{port}: {why}; choose another with {option}")


@contextmanager
def admin_port(role: str) -> Iterator[None]:
    """/healthz and /metrics on the admin port while the process runs (if set)."""
    env = settings()
    if not env.admin_port:
        yield
        return
    from executor.monitoring.admin import serve_admin

    with ExitStack() as stack:
        host, port = env.admin_host, env.admin_port
        try:
            url = stack.enter_context(serve_admin(engine(), role=role, host=host, port=port))
        except OSError as exc:  # the port is taken, or the address is not ours
            raise cannot_listen("the admin port", host, port, ADMIN_OPTION, exc) from None
        out.print(f"admin: {url}/healthz and {url}/metrics")
        yield


def signer() -> Signer:
    return Signer.from_settings(settings())


def notifier_tunables() -> NotifierTunables:
    """The notifier's tunables, with what the environment sets (NIGHTCREW_SLACK_MAX_AGE_H)."""
    from bot.slack.notifier import Tunables

    return Tunables(max_age_s=settings().slack_max_age_h * 3600)


def may_decide(user: str) -> Callable[[Task], bool]:
    """Who sees a task on the /review page: the host's own user every task (the terminal
    acts as it), a Slack user the tasks Slack would let them approve."""
    from bot.slack.handle import may_decide as slack_may_decide

    if user.startswith("local:"):
        return lambda task: True
    return slack_may_decide(config(), user)


def _secrets() -> list[str | None]:
    """This installation's secret values, which no page may show: the model's key, Slack's
    tokens, and the variables every repo hands its agent (`agent_env`)."""
    import contextlib
    import os

    names = {"OPENAI_API_KEY", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"}
    # A broken config is reported elsewhere; the known names still count.
    with contextlib.suppress(Exception):
        names |= {n for repo in config().repos.values() for n in repo.agent_env}
    return [settings().openai_api_key, *(os.environ.get(n) for n in sorted(names))]


@contextmanager
def web_pages() -> Iterator[None]:
    """The task pages and the review queue on the web host and port while the process runs
    (-1: none)."""
    env = settings()
    if env.web_port < 0:
        yield
        return
    from bot.web.app import serve_web

    with ExitStack() as stack:
        try:
            url = stack.enter_context(
                serve_web(
                    engine(),
                    signer(),
                    host=env.web_host,
                    port=env.web_port,
                    may_decide=may_decide,
                    secrets=_secrets(),
                )
            )
        except OSError as exc:
            where = (env.web_host, env.web_port)
            raise cannot_listen("the task pages", *where, WEB_OPTION, exc) from None
        public = env.public_url or "(set NIGHTCREW_PUBLIC_URL to the address people reach)"
        out.print(f"pages: {url}; links point at {public}", soft_wrap=True, markup=False)
        yield


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a person can cause into one line on stderr and a non-zero exit."""
    try:
        yield
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {escape(clean(str(exc)))}")
        raise typer.Exit(2) from None
    except (ActionError, StorageError, IllegalTransition) as exc:  # may quote stored text
        err.print(f"[red]error:[/red] {escape(clean(str(exc)))}")
        raise typer.Exit(1) from None


def act(
    action: Callable[..., Outcome],
    task_id: str,
    *args: str,
    decides: bool = False,
    names_base: bool = False,
) -> None:
    """Run a user action as the local user; `decides`: it needs the requester or an
    approver of the task's repo; `names_base`: its message names the base branch."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            extra: dict = {}
            repo = config().repos.get(get_task(session, tid).repo) if decides else None
            if decides:
                extra["approvers"] = repo.approvers if repo else []
            if names_base and repo:
                extra["base"] = repo.base_branch
            outcome = action(session, tid, *args, actor=local_user(), **extra)
        out.print(outcome.message)


# --- commands ----------------------------------------------------------------------------


def _host(flag: str, what: str, env: str) -> Any:
    return typer.Option(
        None, flag, help=f"Address {what} listens on [env {env}; default 127.0.0.1]."
    )


def _port(flag: str, what: str, env: str, default: str, low: int = 0) -> Any:
    return typer.Option(
        None,
        flag,
        min=low,
        max=65535,
        help=f"Port {what} listens on; 0: any free one [env {env}; default {default}].",
    )


SLACK_HOST = _host("--host", "the Slack HTTP server (HTTP mode)", "NIGHTCREW_HOST")
SLACK_PORT = _port("--port", "the Slack HTTP server (HTTP mode)", "NIGHTCREW_PORT", "3000")
ADMIN_HOST = _host("--admin-host", "/healthz and /metrics", "NIGHTCREW_ADMIN_HOST")
ADMIN_PORT = _port("--admin-port", "/healthz and /metrics", "NIGHTCREW_ADMIN_PORT", "off")
WEB_HOST = _host("--web-host", "the task pages", "NIGHTCREW_WEB_HOST")
WEB_PORT = _port("--web-port", "the task pages (-1: none)", "NIGHTCREW_WEB_PORT", "8780", -1)


@contextmanager
def slack_listener(slack: SlackEnv | None, *, http: bool) -> Iterator[socket.socket | None]:
    """HTTP mode's listening socket, bound before anything starts, so a taken port is one
    clear error at once (None: Socket Mode, or no Slack)."""
    if slack is None or not (http or not slack.app_token) or not slack.signing_secret:
        yield None
        return
    from bot.slack.http_server import listen

    env = settings()
    try:
        listener = listen(env.host, env.port)
    except OSError as exc:
        raise cannot_listen("Slack's HTTP mode", env.host, env.port, SLACK_OPTION, exc) from None
    try:
        yield listener
    finally:
        listener.close()


@app.command()
def up(
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Tasks at once."),
    host: str | None = SLACK_HOST,
    port: int | None = SLACK_PORT,
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
    web_host: str | None = WEB_HOST,
    web_port: int | None = WEB_PORT,
) -> None:
    """Run nightcrew in one process: the executor and the scheduler, plus the Slack bot, its
    notifier and the digest when Slack tokens are set."""
    from bot.scheduler import Scheduler
    from bot.slack.app import SlackEnv

    with user_errors():
        addresses(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port_,
            web_host=web_host,
            web_port=web_port,
        )
        cfg = config()
        with transaction(engine()) as session:
            counts = dict(session.exec(select(Task.state, func.count()).group_by(Task.state)).all())
        out.print(f"database: {redact(settings().db_url)}")  # never its password
        out.print(f"repos: {', '.join(cfg.repos)}")
        out.print(f"tasks: {counts.get(State.QUEUED, 0)} queued, {sum(counts.values())} in all")
        slack = SlackEnv.from_env()
        with slack_listener(slack, http=False) as listener, admin_port("up"), web_pages():
            if slack is None:
                err.print(
                    "[yellow]Slack is not connected:[/yellow] set SLACK_BOT_TOKEN and "
                    "SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode); "
                    "`nightcrew slack-manifest` prints the Slack app's manifest. Running the "
                    "executor only; queue tasks with `nightcrew add`."
                )
                with Scheduler(engine(), config, digests=False):  # scheduled tasks still fire
                    _run_executor(concurrency, drain=False)
                return
            with _bot_in_background(slack, listener):
                _run_executor(concurrency, drain=False)


@contextmanager
def _bot_in_background(slack: SlackEnv, listener: socket.socket | None) -> Iterator[None]:
    """The Slack bot and notifier in threads beside the executor; they meet in the
    database, so neither calls the other."""
    import threading

    from bot.scheduler import Scheduler
    from bot.slack.run import run_bot

    stop = threading.Event()

    def serve() -> None:
        try:
            with Scheduler(engine(), config):  # the digest and scheduled tasks
                run_bot(
                    engine(),
                    config,
                    slack,
                    stop=stop,
                    say=out.print,
                    signer=signer(),
                    listener=listener,
                    tunables=notifier_tunables(),
                )
        except Exception as exc:  # say so; the executor keeps running CLI-queued tasks
            err.print(f"[red]Slack bot stopped:[/red] {exc}")

    thread = threading.Thread(target=serve, name="slack-bot", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@app.command()
def bot(
    http: bool = typer.Option(
        False,
        "--http",
        help="HTTP mode (/slack/events) instead of Socket Mode; needs SLACK_SIGNING_SECRET.",
    ),
    host: str | None = SLACK_HOST,
    port: int | None = SLACK_PORT,
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, help="HTTP mode: server processes (the notifier runs once)."
    ),
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
    web_host: str | None = WEB_HOST,
    web_port: int | None = WEB_PORT,
) -> None:
    """Run the Slack bot and its notifier alone (executors run elsewhere on the same DB)."""
    import threading

    from bot.scheduler import Scheduler
    from bot.slack.app import SlackEnv
    from bot.slack.run import run_bot

    with user_errors():
        addresses(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port_,
            web_host=web_host,
            web_port=web_port,
        )
        slack = SlackEnv.from_env()
        if slack is None:
            raise ActionError(
                "SLACK_BOT_TOKEN is not set; create the Slack app from the manifest that "
                "`nightcrew slack-manifest` prints"
            )
        if not http and not slack.app_token:
            raise ActionError("Socket Mode needs SLACK_APP_TOKEN; or use --http")
        if http and not slack.signing_secret:
            raise ActionError("HTTP mode needs SLACK_SIGNING_SECRET")
        config()  # a broken nightcrew.yaml fails now, not at the first slash command
        stop = threading.Event()
        # SIGTERM (docker stop, systemd) stops gracefully: the notifier finishes the message
        # it is sending and records it, so a restart does not post it again.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            with (
                slack_listener(slack, http=http) as listener,
                admin_port("bot"),
                web_pages(),
                Scheduler(engine(), config),
            ):
                run_bot(
                    engine(),
                    config,
                    slack,
                    stop=stop,
                    http=http,
                    listener=listener,
                    workers=workers,
                    say=out.print,
                    signer=signer(),
                    tunables=notifier_tunables(),
                )
        except KeyboardInterrupt:
            stop.set()


@app.command()
def executor(
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Tasks at once."),
    drain: bool = typer.Option(False, "--drain", help="Exit when the queue is empty."),
    admin_host: str | None = ADMIN_HOST,
    admin_port_: int | None = ADMIN_PORT,
) -> None:
    """Run tasks from the queue in Docker sandboxes."""
    with user_errors():
        addresses(admin_host=admin_host, admin_port=admin_port_)
        with admin_port("executor"):
            _run_executor(concurrency, drain=drain)


def model_waits(cfg: Config, env: Settings) -> dict[str, float]:
    """The model endpoint's outage window and timeouts: the environment's, else the file's."""

    def pick(from_env: float | None, from_file: float) -> float:
        return from_file if from_env is None else from_env

    return {
        "outage_window": 60 * pick(env.model_outage_minutes, cfg.model_outage_minutes),
        "idle_timeout": pick(env.model_idle_timeout_s, cfg.model_idle_timeout_s),
        "timeout": pick(env.model_timeout_s, cfg.model_timeout_s),
    }


def _run_executor(concurrency: int, *, drain: bool) -> None:
    from executor.agents.llm import DEFAULT_BASE_URL, LLMClient
    from executor.runner.pool import run_executor
    from executor.sandbox.container import SandboxError

    cfg, env = config(), settings()
    model = env.model or cfg.model
    if not model:
        raise ConfigError("no model: set NIGHTCREW_MODEL, or `model:` in nightcrew.yaml")

    base_url = env.openai_base_url or cfg.base_url or DEFAULT_BASE_URL

    def make_llm() -> LLMClient:
        return LLMClient(
            base_url=base_url,
            api_key=env.openai_api_key,
            model=model,
            stream=cfg.stream,
            **model_waits(cfg, env),
        )

    try:
        done = run_executor(
            engine=engine(),
            config=cfg,
            home=env.home,
            make_llm=make_llm,
            concurrency=concurrency,
            drain=drain,
            heartbeat_timeout_s=env.heartbeat_timeout_s,
            idle_poll_s=env.idle_poll_s,
            log=out.print,
            reload_config=ConfigWatch(env.config_path, cfg),
        )
    except SandboxError as exc:
        raise ActionError(str(exc)) from None
    out.print(f"performed {done} task(s)")


@app.command()
def doctor(
    fix: bool = typer.Option(
        False, "--fix", "--yes", "-y", help="Build or pull missing sandbox images without asking."
    ),
) -> None:
    """Check the config, database, Docker engine, sandbox images, model endpoint and Slack
    app; print a fix for each problem. Exit code 1 if anything is wrong."""
    from bot.terminal import doctor as checks

    try:
        env = settings()
    except ValueError as exc:  # pydantic's ValidationError: a malformed variable
        err.print(f"[red]settings error:[/red] {exc}")
        raise typer.Exit(2) from None

    def provide(image: str) -> bool:
        if fix or _ask(f"{image} is missing or out of date; build or pull it now?"):
            out.print(f"providing {image} (a build takes a few minutes)…")
            return True
        return False

    results = checks.diagnose(env, provide=provide, report=lambda r: out.print(checks.render(r)))
    out.print(checks.summary(results))
    if any(r.failed for r in results):
        raise typer.Exit(1)


def _ask(question: str) -> bool:
    """Ask only a person at a terminal; scripts get the fix printed instead."""
    return sys.stdin.isatty() and typer.confirm(question, default=True)


@app.command("slack-manifest")
def slack_manifest() -> None:
    """Print the Slack app's manifest (YAML), to paste at api.slack.com/apps when creating
    the app from a manifest."""
    from bot.terminal.doctor import MANIFEST

    out.verbatim(MANIFEST.read_text(encoding="utf-8"))  # our own file: safe anywhere


@app.command()
def init(force: bool = typer.Option(False, "--force", help="Overwrite existing files.")) -> None:
    """Write a commented nightcrew.yaml for the current git repo, and a .env.example."""
    root = git_root(Path.cwd())
    if root is None:
        err.print("[red]error:[/red] not inside a git repository; run `nightcrew init` in one")
        raise typer.Exit(1)
    target = settings().config_path
    files = {
        target: render_config(name=repo_name(root), path=".", base=current_branch(root)),
        target.parent / ".env.example": ENV_EXAMPLE,
    }
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        err.print(
            f"[red]error:[/red] {', '.join(existing)} already exists; use --force to overwrite"
        )
        raise typer.Exit(1)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        out.print(f"wrote {path}")
    if _ignore(root / ".gitignore", [".nightcrew/", ".env"]):
        out.print(f"added .nightcrew/ and .env to {root / '.gitignore'}")
    from bot.links import ensure_secret, secret_path

    ensure_secret(settings().home)  # signs the task pages' links (0600)
    out.print(f"link secret in {secret_path(settings().home)}")
    out.print(
        "next: set the model in .env (see .env.example), `nightcrew doctor --fix`, "
        '`nightcrew up`, then in another terminal `nightcrew add "<what to do>"`'
    )


def _ignore(gitignore: Path, patterns: list[str]) -> bool:
    """Make sure git ignores nightcrew's state and secrets; True if the file changed."""
    text = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
    missing = [p for p in patterns if p not in text.splitlines()]
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        gitignore.write_text(text + sep + "\n".join(missing) + "\n", encoding="utf-8")
    return bool(missing)


@app.command()
def add(
    prompt: str = typer.Argument(..., help="What the agent should do."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    priority: str = typer.Option("normal", "--priority", "-p", help="high, normal or low."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the new task's id."),
    after: str = typer.Option(
        "", "--after", help="Wait until these tasks are merged (ids, comma-separated)."
    ),
) -> None:
    """Queue a task."""
    with user_errors():
        try:
            prio = Priority[priority.upper()]
        except KeyError:
            raise ActionError(f"priority {priority!r} is not one of high, normal, low") from None
        cfg = config()
        issue = actions.from_issue(cfg, prompt, repo)  # an issue URL: fetched as the prompt
        try:
            repo_name_ = issue[0] if issue else cfg.repo_for(repo)
        except ConfigError as exc:  # an unknown --repo is the user's slip, not a broken file
            raise ActionError(str(exc)) from None
        with transaction(engine()) as session:
            prerequisites = [actions.parse_task_id(i) for i in after.split(",") if i.strip()]
            outcome = actions.add(
                session,
                repo=repo_name_,
                prompt=prompt,
                requester=local_user(),
                priority=prio,
                issue_url=issue[1] if issue else None,
                after=prerequisites,
            )
    out.print(outcome.task.id if quiet else outcome.message)


AS_JSON = typer.Option(False, "--json", help="Print JSON instead (docs/CLI.md lists the fields).")
NO_HEADER = typer.Option(False, "--no-header", help="Leave out the table's header line.")


@app.command()
def review(as_json: bool = AS_JSON) -> None:
    """The tasks awaiting approval, riskiest first, with why (the same order as `/agent
    review` and the App Home), and a link to the review page."""
    from bot import review as queue

    with user_errors(), transaction(engine()) as session:
        entries = queue.waiting(session)
    if as_json:
        out.json([records.review_entry(e.task, e.score, e.reasons) for e in entries])
        return
    if not entries:
        out.print("nothing awaits approval")
        return
    out.print(render.review_table(entries))
    out.print(f"page: {signer().review_url(local_user())}", soft_wrap=True, markup=False)


@app.command("ls")
def ls(
    state: list[str] = typer.Option([], "--state", "-s", help="Only these states (repeatable)."),
    all_: bool = typer.Option(False, "--all", "-a", help="Include merged, cancelled, rejected."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Only this repo."),
    mine: bool = typer.Option(False, "--mine", help="Only tasks you (the local user) asked for."),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many, newest first."),
    as_json: bool = AS_JSON,
    no_header: bool = NO_HEADER,
) -> None:
    """List tasks, open ones unless --all or --state; the filters combine."""
    with user_errors():
        states = [_state(s) for s in state] or None
        with transaction(engine()) as session:
            tasks = list_tasks(
                session,
                states=states,
                include_closed=all_,
                repo=repo,
                requester=local_user() if mine else None,
                limit=limit,
            )
    if as_json:
        out.json([records.task(t) for t in tasks])
        return
    if not tasks:  # a message for people; a script sees no rows (stderr stays out of pipes)
        note = "no tasks" + ("" if all_ or states else " open (use --all to see closed ones)")
        (out if out.terminal else err).print(note)
        return
    out.header = not no_header
    out.print(render.task_table(tasks, prompt_width=60 if out.terminal else None))


def _state(text: str) -> State:
    try:
        return State(text.strip().lower().replace("-", "_"))
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise ActionError(f"unknown state {text!r}; states are: {names}") from None


@app.command()
def show(
    task_id: str = typer.Argument(..., help="Task id (or p<id> for a plan)."),
    with_diff: bool = typer.Option(False, "--diff", help="Also print the task's full diff."),
    as_json: bool = AS_JSON,
) -> None:
    """Show one task: state, accounting, time spent, git refs, proof, nudges and recent
    events. `p<id>` shows a plan and its tasks."""
    if task_id.strip().lower().startswith("p"):
        return _show_plan(task_id.strip()[1:])
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            task = get_task(session, tid)
            log = events(session, tid)
            every = nudges(session, tid)
        taken = [n for n in every if n.deleted_at is None]  # not taken back
        proof = next((e.payload for e in reversed(log) if e.kind == "proof"), None)
        runs, times = render.claims(log), render.time_split(log)
        edits = records.nudge_edits(log)
        if as_json:  # withdrawn nudges too, flagged (their words are gone)
            out.json(
                records.detail(
                    task, every, log[-10:], proof=proof, runs=runs, times=times, edits=edits
                )
            )
        else:
            out.print(
                render.task_detail(
                    task, taken, log[-10:], proof=proof, runs=runs, times=times, edited=edits
                )
            )
        if with_diff:
            _print_diff(task)


def _show_plan(plan_id: str) -> None:
    from bot.terminal import plans as plan_render
    from storage.plans import draft_of, get_plan, plan_tasks

    with user_errors():
        pid = actions.parse_task_id(plan_id)
        with transaction(engine()) as session:
            plan = get_plan(session, pid)
            tasks = plan_tasks(session, pid)
            shown = (
                plan_render.progress(plan, tasks)
                if tasks
                else plan_render.proposal(plan, draft_of(plan))
                if plan.proposal
                else f"plan {pid} is {plan.status}" + (f": {plan.error}" if plan.error else "")
            )
    out.print(shown)
    out.print(f"page: {signer().plan_url(pid, local_user())}", soft_wrap=True, markup=False)


@app.command()
def plan(
    spec: str = typer.Argument("", help="What to build; the planner cuts it into tasks."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Queue the plan's tasks at once."),
    queue: int = typer.Option(0, "--queue", help="Queue the proposed plan with this id."),
) -> None:
    """Cut a spec into small dependent tasks (a planner run, read-only in a sandbox), print
    the plan; `--yes` (or later `--queue ID`) queues all of it in one go."""
    from bot import plans as plan_actions
    from bot.terminal import plans as plan_render
    from executor.agents.llm import DEFAULT_BASE_URL, LLMClient
    from executor.agents.planner import Meter, PlanUnusable
    from executor.costs.budget import Books
    from executor.costs.plan_estimate import estimate_nanos, over_budget, planning_refused
    from executor.pipeline.planning import charge as charge_planning
    from executor.pipeline.planning import plan_spec
    from executor.runner.fleet import connect_docker, new_executor_id
    from executor.sandbox.container import SandboxError
    from storage.plans import create_plan

    with user_errors():
        if queue:
            with transaction(engine()) as session:
                message = plan_actions.queue_all(session, queue, actor=local_user())
            out.print(message)
            return
        text = actions.clean_text(spec, what="spec")
        cfg, env = config(), settings()
        try:
            name = cfg.repo_for(repo)
        except ConfigError as exc:
            raise ActionError(str(exc)) from None
        model = env.model or cfg.model
        if not model:
            raise ConfigError("no model: set NIGHTCREW_MODEL, or `model:` in nightcrew.yaml")
        base_url = env.openai_base_url or cfg.base_url or DEFAULT_BASE_URL
        books = Books.of(cfg)
        with transaction(engine()) as session:
            refused = planning_refused(session, books, name)
        if refused:
            raise ActionError(refused)
        llm = LLMClient(
            base_url=base_url, api_key=env.openai_api_key, model=model, **model_waits(cfg, env)
        )
        meter = Meter()  # what the planner's model calls used, however its run ends
        try:
            try:
                with llm:
                    planned = plan_spec(
                        client=connect_docker(),
                        llm=llm,
                        home=env.home,
                        repo_name=name,
                        repo=cfg.repos[name],
                        spec=text,
                        executor_id=new_executor_id(engine()),
                        meter=meter,
                    )
            except BaseException:  # no plan (unusable, a crash, Ctrl-C), but the calls were made
                with transaction(engine()) as session:
                    charge_planning(
                        session, books, repo=name, plan_id=None, model=model, usage=meter.usage
                    )
                raise
        except (PlanUnusable, SandboxError) as exc:
            raise ActionError(str(exc)) from None
        with transaction(engine()) as session:
            made = create_plan(
                session, repo=name, spec=text, draft=planned.draft, requester=local_user()
            )
            assert made.id is not None
            charge_planning(
                session, books, repo=name, plan_id=made.id, model=model, usage=meter.usage
            )
            estimate = estimate_nanos(planned.draft, cfg.repos[name])
            note = over_budget(session, books, name, estimate)
        out.print(plan_render.proposal(made, planned.draft))
        if note:  # said before anything is queued
            err.print(f"[yellow]warning:[/yellow] {escape(note)}")
        message = None
        if yes:
            with transaction(engine()) as session:
                message = plan_actions.queue_all(session, made.id, actor=local_user())
        out.print(message or f"queue it with: nightcrew plan --queue {made.id}")


@app.command()
def log(
    task_id: str = typer.Argument(..., help="Task id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per event and line (docs/CLI.md)."
    ),
) -> None:
    """Print a task's event log; --follow waits for more until the task stops working."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        last = 0
        while True:
            with transaction(engine()) as session:
                batch = events(session, tid, after_id=last)
                state = State(get_task(session, tid).state)
            for event in batch:
                if as_json:
                    out.json(records.event(event))
                else:
                    out.print(render.event_line(event, full=not out.terminal))
                last = event.id or last
            if not follow or (state not in WORKING and state is not State.QUEUED):
                break
            try:
                time.sleep(1.0)
            except KeyboardInterrupt:
                break


@app.command()
def diff(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Print a task's full diff: coloured on a terminal, and in a pipe exactly as `git apply`
    takes it on the base branch."""
    with user_errors():
        tid = actions.parse_task_id(task_id)
        with transaction(engine()) as session:
            task = get_task(session, tid)
        _print_diff(task)


def _print_diff(task: Task) -> None:
    from bot.terminal.diff import coloured
    from executor.git.patch import GitError, task_patch
    from executor.git.workspace import canonical_path

    repo = config().repos.get(task.repo)
    if repo is None:
        raise ActionError(f"task {task.id}: repo {task.repo!r} is not in the configuration")
    if not task.head_commit:
        raise ActionError(f"task {task.id} has no commits yet ({task.state.value})")
    canonical = canonical_path(settings().home, task.repo, repo)
    landed = task.base_commit if task.state is State.MERGED else None
    try:
        patch = task_patch(canonical, repo.base_branch, task.head_commit, landed_from=landed)
    except GitError as exc:
        raise ActionError(f"task {task.id}: cannot read its diff: {exc}") from None
    if not patch:
        err.print(f"task {task.id} changes nothing")
    elif out.terminal:
        out.print(coloured(patch))
    else:  # a pipe: byte for byte, for `git apply`
        out.verbatim(patch)


@app.command()
def nudge(
    task_id: str = typer.Argument(..., help="Task id."),
    text: str = typer.Argument(..., help="What to tell the agent."),
) -> None:
    """Tell a task's agent something; a waiting task goes back to work with it."""
    act(actions.nudge, task_id, text)


@app.command()
def cancel(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Cancel a task (a working agent stops at its next step)."""
    act(actions.cancel, task_id, decides=True)


@app.command()
def retry(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Queue a failed, cancelled or stuck task again."""
    act(actions.retry, task_id)


@app.command()
def approve(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Approve a task awaiting approval; it is merged next."""
    act(actions.approve, task_id, decides=True, names_base=True)


@app.command()
def reject(task_id: str = typer.Argument(..., help="Task id.")) -> None:
    """Reject a task; its branch is never merged."""
    act(actions.reject, task_id, decides=True)


@app.command()
def budget(as_json: bool = AS_JSON, no_header: bool = NO_HEADER) -> None:
    """Show today's spend against the daily budgets (nightcrew.yaml `budgets:`), per repo."""
    from executor.costs.budget import WAITING, Books
    from storage.queue import waiting_by_repo

    with user_errors():
        books = Books.of(config())
        with transaction(engine()) as session:
            day, budgets = books.today(session)
            waiting = waiting_by_repo(session, marker=WAITING)
    if as_json:
        out.json(records.budgets(day, budgets, waiting))
        return
    out.header = not no_header
    head, table, note = render.budget_table(day, budgets, waiting).renderables
    if out.terminal:
        out.print(Group(head, table, note))
    else:  # a script reads the rows; the day and the note are for people
        err.print(head)
        out.print(table)
    if not books.budgets.any:
        err.print("no budgets set; add `budgets: {daily_usd: 20}` to nightcrew.yaml")


@app.command()
def repos(as_json: bool = AS_JSON, no_header: bool = NO_HEADER) -> None:
    """List the configured repos."""
    with user_errors():
        cfg = config()
    if as_json:
        out.json(records.repos(cfg))
        return
    out.header = not no_header
    out.print(render.repos_table(cfg))
    if cfg.source is None:
        err.print("(no nightcrew.yaml: using the current git repo; `nightcrew init` writes one)")


@app.command()
def digest(
    mine: bool = typer.Option(False, "--mine", help="Only tasks you (the local user) asked for."),
    as_json: bool = AS_JSON,
) -> None:
    """Print the digest now: since the last scheduled one, what waits for approval (riskiest
    first), what merged, failed or is still open, and the totals. Sends nothing."""
    from zoneinfo import ZoneInfo

    from bot.slack import digest_send as digests

    with user_errors():
        cfg = config()
        with transaction(engine()) as session:
            requester = local_user() if mine else None
            data, _, _ = digests.on_demand(session, cfg, utcnow(), requester=requester)
    if as_json:
        out.json(records.digest(data))
        return
    out.print(render.digest(data, ZoneInfo(cfg.digest.timezone), full=not out.terminal))


schedule_app = typer.Typer(
    help="Recurring tasks: each fire time of a cron expression queues a normal task.",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add")
def schedule_add(
    cron: str = typer.Argument(
        ..., help='Five fields, minute hour day month weekday ("0 9 * * 1"), or @daily, @weekly.'
    ),
    prompt: str = typer.Argument(..., help="What the agent should do at each firing."),
    repo: str | None = typer.Option(None, "--repo", "-r", help="Repo name from nightcrew.yaml."),
    tz: str | None = typer.Option(
        None, "--tz", help="Time zone of the cron (default: the digest's, from nightcrew.yaml)."
    ),
    channel: str | None = typer.Option(
        None, "--channel", help="Slack channel id for the tasks' cards (default: none, CLI only)."
    ),
) -> None:
    """Add a schedule; it first fires at its next cron time."""
    from bot import schedules

    with user_errors(), transaction(engine()) as session:
        added = schedules.add(
            session,
            config(),
            cron=cron,
            prompt=prompt,
            creator=local_user(),
            repo=repo,
            channel=channel,
            timezone=tz,
        )
        line = schedules.describe(added, utcnow())
    out.print(f"added schedule {line}", markup=False)


@schedule_app.command("list")
def schedule_list() -> None:
    """List the schedules with their next fire time."""
    from bot import schedules
    from storage.schedules import list_schedules

    with user_errors(), transaction(engine()) as session:
        lines = [schedules.describe(s, utcnow()) for s in list_schedules(session)]
    for line in lines or ["no schedules; add one with `nightcrew schedule add`"]:
        out.print(line, markup=False)


def _change_schedule(schedule_id: int, change: str) -> None:
    from bot import schedules

    with user_errors(), transaction(engine()) as session:
        if change == "delete":
            message = schedules.delete(session, config(), schedule_id, actor=local_user())
        else:
            message = schedules.pause(
                session, config(), schedule_id, actor=local_user(), paused=change == "pause"
            )
    out.print(message)


@schedule_app.command("pause")
def schedule_pause(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Stop a schedule from firing until it is resumed."""
    _change_schedule(schedule_id, "pause")


@schedule_app.command("resume")
def schedule_resume(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Let a paused schedule fire again (from its next fire time; missed ones are skipped)."""
    _change_schedule(schedule_id, "resume")


@schedule_app.command("delete")
def schedule_delete(schedule_id: int = typer.Argument(..., min=1, help="Schedule id.")) -> None:
    """Delete a schedule; the tasks it queued stay."""
    _change_schedule(schedule_id, "delete")


if __name__ == "__main__":
    sys.exit(main())


image_app = typer.Typer(help="Sandbox images.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    agents: str = typer.Option(
        ..., "--agents", help="Comma-separated: aider, codex, claude-code (from PyPI and npm)."
    ),
    base: str = typer.Option(DEFAULT_IMAGE, "--base", help="The image to build on."),
    tag: str | None = typer.Option(None, "--tag", help="Also tag the result so."),
) -> None:
    """Build a sandbox image with external agents on top of the registry-free base; prints
    its tag (reused when nothing changed) for `image:` in nightcrew.yaml."""
    import docker

    from executor.sandbox.agent_image import build_agents_image, normalise
    from executor.sandbox.container import SandboxError

    try:
        chosen = normalise(agents.split(","))
        out.print(f"building {', '.join(chosen)} on {base} (a first build takes minutes)…")
        built = build_agents_image(docker.from_env(), chosen, base=base, tag=tag)
    except (ValueError, SandboxError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print(built)
