"""Which project a command works in, found from where it runs as git finds its repo: so
`nightcrew ls` in a subfolder reads the project's database, not a new one beside it."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "nightcrew.yaml"
HOME_DIR = ".nightcrew"


def find_project(cwd: Path) -> Path | None:
    """Inside a git work tree: the nearest folder from `cwd` up to its top that holds
    nightcrew.yaml, else the top itself. Outside one: the nearest folder up that holds
    nightcrew.yaml or .nightcrew/. None when there is none. A marker above a repo never
    captures it, nor does a stray .nightcrew/ in a repo's subfolder."""
    cwd = cwd.absolute()
    root = git_root(cwd)
    for folder in (cwd, *cwd.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
        if root is None and (folder / HOME_DIR).is_dir():
            return folder
        if folder == root:
            return root
    return None


def git_root(path: Path) -> Path | None:
    """The work tree around `path`, or None. Every command reads the config, and GitPython
    costs ~0.3 s to import: an ordinary `.git` (a folder with HEAD, or a worktree's
    `gitdir:` file) is recognised without it; anything else is left to GitPython."""
    path = path.absolute()
    for folder in (path, *path.parents):
        dot_git = folder / ".git"
        if (dot_git / "HEAD").is_file() or (
            dot_git.is_file() and dot_git.read_text(errors="replace").startswith("gitdir:")
        ):
            return folder
    from git import InvalidGitRepositoryError, NoSuchPathError, Repo

    try:
        return Path(Repo(path, search_parent_directories=True).working_dir)
    except (InvalidGitRepositoryError, NoSuchPathError):
        return None
