"""Workspaces with real git. "Inside the container" is a subprocess in the workspace with a
clean environment and a HOME of its own; everything else in a test is the host.

The security tests keep the two sides apart in time: the agent plants things and hands back
its branch (the sandbox may run what it planted), the markers are wiped, then the host steps
run and must leave no marker. A canary at the end of each shows the plants are live: a naive
host-side git call does trip them."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from executor.config.schema import RepoConfig
from executor.git.workspace import (
    Exec,
    Workspace,
    WorkspaceError,
    collect,
    commit_leftovers,
    diff_text,
    prepare,
    read_workspace_file,
    remove,
)
from tests.conftest import git

HOOKS = [
    "pre-commit",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-merge",
    "post-rewrite",
    "pre-auto-gc",
    "reference-transaction",
    "fsmonitor-watchman",
]


def sandbox(ws: Workspace, tmp_path: Path) -> Exec:
    home = tmp_path / "agent-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}

    def run(command: str) -> tuple[int, str]:
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=ws.path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, result.stdout + result.stderr

    return run


def agent(run: Exec, command: str) -> str:
    code, output = run(command)
    assert code == 0, output
    return output


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "nightcrew-home"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Where planted commands leave their marks; only its emptiness is ever asserted."""
    path = tmp_path / "host"
    path.mkdir()
    return path


def test_prepare_branches_off_the_latest_base(git_repo: Path, home: Path) -> None:
    (git_repo / "later.txt").write_text("x\n")
    git(git_repo, "add", ".")
    git(git_repo, "commit", "-qm", "later")
    ws = prepare(home, "app", RepoConfig(path=git_repo), 1, "nightcrew/1-fix-it")

    assert ws.path == (home / "workspaces" / "task-1").resolve()
    assert ws.canonical == git_repo.resolve()
    assert ws.base_commit == git(git_repo, "rev-parse", "main")
    assert (ws.path / ".git").is_dir()  # a real clone: git works inside the container
    assert git(ws.path, "symbolic-ref", "HEAD") == "refs/heads/nightcrew/1-fix-it"
    assert git(ws.path, "rev-parse", "HEAD") == ws.base_commit
    assert git(ws.path, "status", "--porcelain") == ""
    assert git(ws.path, "remote") == ""  # nothing in it names a host repo
    assert git(ws.path, "config", "user.name") == "nightcrew agent"
    assert (ws.path / "later.txt").read_text() == "x\n"
    objects = [p for p in (ws.path / ".git" / "objects").rglob("*") if p.is_file()]
    assert all(p.stat().st_nlink == 1 for p in objects)  # no hardlinks into the user's repo


def test_url_repo_is_cloned_once_and_fetched_before_each_task(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream.git"
    git(tmp_path, "clone", "-q", "--bare", str(git_repo), str(upstream))
    repo = RepoConfig(url=f"file://{upstream}")
    first = prepare(home, "app", repo, 1, "nightcrew/1-a")
    assert first.canonical == (home / "repos" / "app.git").resolve()
    (first.canonical / "cloned-once").touch()

    git(git_repo, "commit", "--allow-empty", "-qm", "upstream moved on")
    git(git_repo, "push", "-q", str(upstream), "main")
    second = prepare(home, "app", repo, 2, "nightcrew/2-b")

    assert second.base_commit == git(git_repo, "rev-parse", "main") != first.base_commit
    assert (second.canonical / "cloned-once").exists()
    assert sorted(p.name for p in (home / "repos").iterdir()) == ["app.git", "app.lock"]


def test_workers_racing_on_a_new_url_repo_clone_it_once(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream.git"
    git(tmp_path, "clone", "-q", "--bare", str(git_repo), str(upstream))
    repo = RepoConfig(url=str(upstream))
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda i: prepare(home, "app", repo, i, f"nightcrew/{i}-x"), range(4)))
    assert {ws.base_commit for ws in made} == {git(git_repo, "rev-parse", "main")}
    assert sorted(p.name for p in (home / "repos").iterdir()) == ["app.git", "app.lock"]


def test_committed_and_leftover_work_lands_on_the_branch(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    ws = prepare(home, "app", RepoConfig(path=git_repo), 3, "nightcrew/3-add-a")
    run = sandbox(ws, tmp_path)
    (ws.path / "a.py").write_text("one\ntwo\n")
    agent(run, "git add a.py && git commit -qm 'agent: add a.py' && git log --oneline")
    (ws.path / "README.md").write_text("# App\nmore\n")  # left uncommitted
    (ws.path / "notes.txt").write_text("x\n")  # left untracked

    commit_leftovers(run, ws, "nightcrew: leftovers")
    got = collect(ws)

    assert got.head_commit == git(git_repo, "rev-parse", ws.branch)
    subjects = git(git_repo, "log", "--format=%s", f"main..{ws.branch}").splitlines()
    assert subjects == ["nightcrew: leftovers", "agent: add a.py"]
    assert sorted(got.files_changed) == ["README.md", "a.py", "notes.txt"]
    assert (got.insertions, got.deletions) == (5, 1)
    assert "3 files changed, 5 insertions(+), 1 deletion(-)" in got.diff_stat
    assert "a.py" in got.diff_stat
    # The user's own checkout is untouched.
    assert git(git_repo, "branch", "--show-current") == "main"
    assert git(git_repo, "status", "--porcelain") == ""


def test_no_changes_collects_the_base(git_repo: Path, home: Path, tmp_path: Path) -> None:
    ws = prepare(home, "app", RepoConfig(path=git_repo), 4, "nightcrew/4-nothing")
    commit_leftovers(sandbox(ws, tmp_path), ws, "nightcrew: leftovers")
    got = collect(ws)
    assert got.head_commit == ws.base_commit
    assert (got.files_changed, got.insertions, got.deletions, got.diff_stat) == ([], 0, 0, "")


def test_diff_counts_both_sides_of_renames_binaries_and_odd_names(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    ws = prepare(home, "app", RepoConfig(path=git_repo), 5, "nightcrew/5-odd")
    (ws.path / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    (ws.path / "naïve name.txt").write_text("a\nb\n")
    agent(sandbox(ws, tmp_path), "git mv README.md GUIDE.md")
    commit_leftovers(sandbox(ws, tmp_path), ws, "leftovers")
    got = collect(ws)
    # No rename detection: both paths count, so a scope check sees where a file came from.
    assert sorted(got.files_changed) == ["GUIDE.md", "README.md", "blob.bin", "naïve name.txt"]
    assert (got.insertions, got.deletions) == (3, 1)
    assert "README.md" in got.diff_stat and "GUIDE.md" in got.diff_stat


def test_a_retried_task_continues_from_its_branch(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    repo = RepoConfig(path=git_repo)
    ws = prepare(home, "app", repo, 7, "nightcrew/7-retry")
    (ws.path / "a.txt").write_text("first try\n")
    commit_leftovers(sandbox(ws, tmp_path), ws, "attempt 1")
    first = collect(ws)
    (ws.path / "stale.txt").write_text("never handed back\n")  # the worker died here
    git(git_repo, "commit", "--allow-empty", "-qm", "main moved on")

    again = prepare(home, "app", repo, 7, "nightcrew/7-retry")
    assert again.path == ws.path
    assert not (again.path / "stale.txt").exists()
    assert git(again.path, "rev-parse", "HEAD") == first.head_commit
    assert again.base_commit == ws.base_commit  # measured from where the task started
    (again.path / "b.txt").write_text("second try\n")
    commit_leftovers(sandbox(again, tmp_path), again, "attempt 2")
    second = collect(again)
    assert sorted(second.files_changed) == ["a.txt", "b.txt"]
    assert git(git_repo, "rev-parse", f"{second.head_commit}~1") == first.head_commit


def test_remove_copes_with_read_only_foreign_files_and_follows_no_symlink(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    ws = prepare(home, "app", RepoConfig(path=git_repo), 8, "nightcrew/8-rm")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    (ws.path / "dir-link").symlink_to(outside)
    (ws.path / "file-link").symlink_to(outside / "keep.txt")
    os.mkfifo(ws.path / "pipe")
    deep = ws.path / "ro" / "deeper"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    (deep / "f").chmod(0o444)
    if os.geteuid() == 0:  # files of the container's uid, as a rootless host would see them
        os.chown(deep / "f", 12345, 12345)
        os.chown(deep, 12345, 12345)
    deep.chmod(0o555)
    deep.parent.chmod(0o555)

    remove(ws)
    remove(ws)  # again: nothing left is not an error

    assert not ws.path.exists()
    assert (outside / "keep.txt").read_text() == "keep\n"


def plant(ws: Workspace, run: Exec, host: Path, tmp_path: Path) -> None:
    """What a hostile agent can do to its clone: hooks, config, attributes, all pointing at a
    command that leaves a mark in `host`."""
    evil = ws.path / ".git" / "evil"
    evil.write_text(f'#!/bin/sh\necho "$1" >> {host}/pwned\ncat\n')
    evil.chmod(0o755)
    for hooks in (ws.path / ".git" / "hooks", ws.path / ".git" / "evil-hooks"):
        hooks.mkdir(exist_ok=True)
        for name in HOOKS:
            (hooks / name).write_text(f'#!/bin/sh\nexec {evil} hook-{name} "$@"\n')
            (hooks / name).chmod(0o755)
    included = tmp_path / "included.cfg"  # a host file the agent names by path
    included.write_text(f"[core]\n\tfsmonitor = {evil} via-include\n")
    settings = {
        "core.fsmonitor": f"{evil} fsmonitor",
        "core.hooksPath": str(ws.path / ".git" / "evil-hooks"),
        "core.pager": f"{evil} pager",
        "core.sshCommand": f"{evil} ssh",
        "core.alternateRefsCommand": f"{evil} alternate-refs",
        "filter.x.clean": f"{evil} filter-clean",
        "filter.x.smudge": f"{evil} filter-smudge",
        "diff.external": f"{evil} diff-external",
        "diff.x.textconv": f"{evil} textconv",
        "uploadpack.packObjectsHook": f"{evil} pack-objects-hook",
        "credential.helper": f"!{evil} credential",
        "gpg.program": f"{evil} gpg",
        "include.path": str(included),
    }
    for key, value in settings.items():
        agent(run, f"git config {key} '{value}'")
    (ws.path / ".gitattributes").write_text("* filter=x diff=x\n")
    (ws.path / "work.txt").write_text("agent work\n")
    agent(run, "git add -A && git commit -qm 'agent work'")
    (ws.path / "work.txt").write_text("agent work\nleft over\n")


def test_planted_hooks_and_config_never_run_on_the_host(
    git_repo: Path, home: Path, host: Path, tmp_path: Path
) -> None:
    ws = prepare(home, "app", RepoConfig(path=git_repo), 9, "nightcrew/9-evil")
    run = sandbox(ws, tmp_path)
    plant(ws, run, host, tmp_path)
    commit_leftovers(run, ws, "leftovers")  # in the sandbox: planted things may fire here
    (host / "pwned").unlink(missing_ok=True)

    got = collect(ws)
    read_workspace_file(ws.path, "work.txt")
    prepare(home, "app", RepoConfig(path=git_repo), 10, "nightcrew/10-next")
    assert not (host / "pwned").exists()
    assert sorted(got.files_changed) == [".gitattributes", "work.txt"]

    # The control: plain git on the host runs all three. A file whose stat matches the index
    # is not read again (git trusts it unless the index is "racy"), so its clean filter may
    # not run: a new mtime makes git read it, and run the filter, every time.
    later = (ws.path / "work.txt").stat().st_mtime + 10
    os.utime(ws.path / "work.txt", (later, later))
    subprocess.run(["git", "diff", "HEAD~1"], cwd=ws.path, capture_output=True)
    fired = set((host / "pwned").read_text().split())
    assert {"via-include", "filter-clean", "diff-external"} <= fired  # include.path was read
    (host / "pwned").unlink()
    remove(ws)
    assert not (host / "pwned").exists()


def test_the_host_never_reads_the_clones_git_dir(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    """After handing back, the agent wrecks its `.git`: config becomes a link to a host file
    (any git reading it would die on it), alternates name a host repo. collect() still works
    because it reads nothing there but the bundle."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    ws = prepare(home, "app", RepoConfig(path=git_repo), 11, "nightcrew/11-wreck")
    run = sandbox(ws, tmp_path)
    (ws.path / "a.txt").write_text("a\n")
    commit_leftovers(run, ws, "leftovers")
    agent(run, f"rm .git/config && ln -s {secret} .git/config && echo junk > .git/HEAD")
    agent(run, f"echo {git_repo}/.git/objects > .git/objects/info/alternates")

    got = collect(ws)

    assert got.files_changed == ["a.txt"]
    canary = subprocess.run(["git", "status"], cwd=ws.path, capture_output=True, text=True)
    assert canary.returncode != 0  # plain git in the clone does trip on it


def test_symlinks_are_never_followed_on_the_host(
    git_repo: Path, home: Path, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    secret = secrets / "id_rsa"
    secret.write_text("TOP SECRET KEY\n")
    ws = prepare(home, "app", RepoConfig(path=git_repo), 12, "nightcrew/12-links")
    run = sandbox(ws, tmp_path)
    agent(run, f"ln -s {secret} leak && ln -s {secret} AGENTS.md && ln -s {secrets} docs")
    agent(run, "mkdir -p src && printf 'be nice\\n' > src/AGENTS.md && mkfifo pipe")
    commit_leftovers(run, ws, "leftovers")
    got = collect(ws)

    # Git keeps a symlink as a blob holding its target's *name*.
    assert git(git_repo, "cat-file", "-p", f"{got.head_commit}:leak") == str(secret)
    assert "leak" in got.files_changed and "TOP SECRET" not in got.diff_stat
    grep = subprocess.run(["git", "grep", "-q", "TOP SECRET", got.head_commit], cwd=git_repo)
    assert grep.returncode == 1

    for refused in ["AGENTS.md", "leak", "docs/id_rsa", "pipe", "src", "../secrets/id_rsa"]:
        assert read_workspace_file(ws.path, refused) is None, refused
    assert read_workspace_file(ws.path, str(secret)) is None
    assert read_workspace_file(ws.path, "nope.md") is None
    assert read_workspace_file(ws.path, "src/AGENTS.md") == "be nice\n"
    assert read_workspace_file(ws.path, "./src/AGENTS.md", max_bytes=4) == "be n"


@pytest.mark.parametrize("swap", ["bundle", "git-dir"])
def test_a_handed_back_bundle_behind_a_symlink_is_refused(
    git_repo: Path, home: Path, tmp_path: Path, swap: str
) -> None:
    """The agent points the hand-back at another bundle on the host (say, another task's)."""
    ws = prepare(home, "app", RepoConfig(path=git_repo), 13, "nightcrew/13-swap")
    run = sandbox(ws, tmp_path)
    (ws.path / "mine.txt").write_text("mine\n")
    commit_leftovers(run, ws, "leftovers")
    decoy = tmp_path / "decoy" / ".git"
    decoy.mkdir(parents=True)
    (decoy / "nightcrew.bundle").write_bytes((ws.path / ".git" / "nightcrew.bundle").read_bytes())
    if swap == "bundle":
        agent(run, f"rm .git/nightcrew.bundle && ln -s {decoy}/nightcrew.bundle .git/")
    else:
        agent(run, f"mv .git .git-real && ln -s {decoy} .git")

    with pytest.raises(WorkspaceError, match="nothing handed back"):
        collect(ws)
    assert git(git_repo, "branch", "--list", ws.branch) == ""


def test_the_users_own_hooks_and_filters_do_not_fire(
    git_repo: Path, home: Path, host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's global LFS-style filter, the user's repo's own textconv and hooks must not run
    for nightcrew's git calls, least of all on agent-written data (a retried task checks out
    the agent's `.gitattributes`; collect() diffs the agent's blobs)."""
    for name in ["reference-transaction", "post-checkout", "post-merge"]:
        hook = git_repo / ".git" / "hooks" / name
        hook.write_text(f"#!/bin/sh\necho user-hook-{name} >> {host}/pwned\n")
        hook.chmod(0o755)
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    mark = f"sh -c 'echo $0 >> {host}/pwned; cat'"
    (user_home / ".gitconfig").write_text(
        f'[filter "lfs"]\n\tclean = "{mark} clean"\n\tsmudge = "{mark} smudge"\n'
        f'[diff "lfs"]\n\ttextconv = "{mark} textconv"\n'
    )
    # The user's repo runs a converter on its files' diffs (think exiftool on images): it must
    # not get agent-written blobs.
    git(git_repo, "config", "diff.conv.textconv", f"{mark} repo-textconv")
    (git_repo / ".git" / "info" / "attributes").write_text("*.dat diff=conv\n")
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)

    repo = RepoConfig(path=git_repo)
    ws = prepare(home, "app", repo, 14, "nightcrew/14-lfs")
    (ws.path / ".gitattributes").write_text("* filter=lfs diff=lfs\n")
    (ws.path / "big.dat").write_text("payload\n")
    commit_leftovers(sandbox(ws, tmp_path), ws, "leftovers")
    got = collect(ws)
    assert "+payload" in diff_text(ws, got.head_commit)
    prepare(home, "app", repo, 14, "nightcrew/14-lfs")  # the retry checks out those attributes
    assert not (host / "pwned").exists()

    canary = tmp_path / "canary"
    subprocess.run(["git", "clone", "-q", "-b", ws.branch, str(git_repo), str(canary)])
    subprocess.run(["git", "diff", ws.base_commit, ws.branch], cwd=git_repo, capture_output=True)
    assert {"smudge", "repo-textconv"} <= set((host / "pwned").read_text().split())
