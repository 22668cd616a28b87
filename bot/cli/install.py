"""Setting nightcrew up on a machine: `init` (nightcrew.yaml, .env.example, the link
secret), `doctor` (the checks, with a fix for each problem), `slack-manifest` and
`image build` (a sandbox image with external agents)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from bot.cli.composition import settings
from bot.cli.console import err, out
from executor.config.project import git_root
from executor.config.schema import DEFAULT_IMAGE, current_branch, repo_name
from executor.config.template import ENV_EXAMPLE, render_config


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


def slack_manifest() -> None:
    """Print the Slack app's manifest (YAML), to paste at api.slack.com/apps when creating
    the app from a manifest."""
    from bot.terminal.doctor import MANIFEST

    out.verbatim(MANIFEST.read_text(encoding="utf-8"))  # our own file: safe anywhere


def init(
    force: bool = typer.Option(
        False, "--force", help="Write them again; the old ones are kept as NAME.bak."
    ),
) -> None:
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
    existing = [p for p in files if p.exists()]
    if existing and not force:
        names = ", ".join(_shown(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        err.print(
            f"[red]error:[/red] {names} already {verb}; --force writes new ones and keeps "
            "the old ones as .bak files"
        )
        raise typer.Exit(1)
    for path, text in files.items():
        if path.exists():
            kept = _backup(path)
            out.print(f"kept the old {path.name} as {_shown(kept)}")
        path.write_text(text, encoding="utf-8")
        out.print(f"wrote {_shown(path)}")
    if _ignore(root / ".gitignore", [".nightcrew/", ".env"]):
        out.print(f"added .nightcrew/ and .env to {root / '.gitignore'}")
    from bot.links import ensure_secret, secret_path

    ensure_secret(settings().home)  # signs the task pages' links (0600)
    out.print(f"link secret in {_shown(secret_path(settings().home))}")
    out.print(
        "next: set the model in .env (see .env.example), `nightcrew doctor --fix`, "
        '`nightcrew up`, then in another terminal `nightcrew add "<what to do>"`'
    )


def _shown(path: Path) -> str:
    """`path` as the person sees it from where they are: relative below the working folder."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _backup(path: Path) -> Path:
    """`path` renamed to the first free NAME.bak, NAME.bak.1, …: a second --force must not
    lose the first one's backup."""
    n, kept = 0, path.with_name(path.name + ".bak")
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.bak.{n}")
    path.rename(kept)
    return kept


def _ignore(gitignore: Path, patterns: list[str]) -> bool:
    """Make sure git ignores nightcrew's state and secrets; True if the file changed."""
    text = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
    missing = [p for p in patterns if p not in text.splitlines()]
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        gitignore.write_text(text + sep + "\n".join(missing) + "\n", encoding="utf-8")
    return bool(missing)


image_app = typer.Typer(help="Sandbox images.", no_args_is_help=True)


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
