"""Per-task git workspaces: prepare a checkout, take the agent's work back, clean up.

Layout under NIGHTCREW_HOME:

    repos/<name>.git       bare clone of a `url:` repo, fetched before each task
    repos/<name>.lock      serialises that clone and fetch between workers
    sandboxes/<hex>        a sandbox's own folder, mounted at /workspace (executor/sandbox/warm.py):
                           the task's clone is made in it, and copied to workspaces/ when the
                           container is gone; where the host can, a filesystem of its own
                           (`<hex>.img`, executor/git/quota.py): the disk quota, nosuid, nodev
    workspaces/task-<id>   the task's checkout, kept after its run until the task closes

Every folder here is 0700 (repos/, sandboxes/, workspaces/ and each task's): a checkout
holds the repo's code and whatever the agent wrote, for the host user only, even when the agent
opened its own files to everyone. No setuid/setgid bit survives on the host: a checkout is
kept only with those bits cleared (keep()).

The canonical repo (a `path:` repo where it is, or the bare clone) is host-owned and keeps the
truth: the task's branch lives there. A workspace is a clone with a real `.git` directory (a
`git worktree`'s `.git` file names a host path that does not exist in the container), filled by
a fetch rather than hardlinks or `--shared` (the agent must not reach the canonical object
files, nor point us at other object stores through `objects/info/alternates`), with no remote.

Threat model: once the container has run, everything under the workspace is the agent's:
`.git/config` (fsmonitor, hooksPath, filters, diff.external, sshCommand, include.path, ...),
hooks, attributes, alternates, refs, and symlinks anywhere. So:

- The host never runs git in a workspace after prepare(). Agent-controlled git runs where
  agent-controlled code may run, in the sandbox: commit_leftovers() commits what is left and
  writes the task's branch as a bundle there.
- collect() copies that one file out (no symlink followed on any path component, regular files
  only, size-capped) and fetches the branch from the copy into the canonical repo. A bundle is
  data: the host's git reads it with host config only and fsck-checks its objects as it would
  from any untrusted remote. Head commit, diff stat and patch come from the canonical repo
  with external diff and textconv off. (Fetching from the clone itself would not do: upload-pack
  runs in the clone with the clone's config, follows its include.path to any host file, and
  git strips our `-c` hardening before starting it; seen with git 2.39.)
- Files in a workspace are read only through read_workspace_file(): every path component is
  opened with O_NOFOLLOW beneath the workspace, and only regular files are read.
- remove() walks with directory file descriptors and never follows a symlink.
- prepare() of a retried task checks out agent-written trees: with no global or system config
  (executor/git/safe.py), a committed `.gitattributes` cannot select the user's LFS filter.

Call collect(), remove() and a retry's prepare() only once the task's container has stopped: a
process still running in it could race any step that touches the workspace. Failures raise
GitError or WorkspaceError."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from executor.config.schema import RepoConfig
from executor.git import quota
from executor.git.safe import GitError, git

__all__ = [
    "Collected",
    "Exec",
    "GitError",
    "Workspace",
    "WorkspaceError",
    "canonical_path",
    "canonical_repo",
    "checkout_commit",
    "checkout_path",
    "collect",
    "commit_leftovers",
    "diff_text",
    "keep",
    "measure",
    "prepare",
    "private_dir",
    "read_workspace_file",
    "remove",
]

# Runs a shell command in the sandbox at /workspace: (exit code, output). For a Sandbox:
# `lambda command: (lambda r: (r.exit_code, r.output))(sandbox.exec(command))`.
Exec = Callable[[str], tuple[int, str]]

BUNDLE = ".git/nightcrew.bundle"  # where the sandbox hands the branch back
MAX_BUNDLE_BYTES = 2 * 1024**3  # a task's whole change; a bigger one is a runaway, not a diff
AGENT_NAME = "nightcrew agent"
AGENT_EMAIL = "agent@nightcrew.invalid"
DIFF_SAFE = ("--no-ext-diff", "--no-textconv", "--no-color")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")  # it lands in a shell script and a refspec
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block


class WorkspaceError(Exception):
    """A workspace cannot be prepared, handed back or removed; the message says why."""


@dataclass(frozen=True)
class Workspace:
    path: Path  # absolute; mounted at /workspace
    branch: str
    base_commit: str  # where the task's change starts; diffs are measured from here
    canonical: Path  # the host-owned repo that keeps the branch


@dataclass(frozen=True)
class Collected:
    head_commit: str
    diff_stat: str  # `git diff --stat`; odd file names come quoted by git
    files_changed: list[str]  # raw names: escape before rendering
    insertions: int
    deletions: int


def prepare(
    home: Path,
    repo_name: str,
    repo: RepoConfig,
    task_id: int,
    branch: str,
    *,
    into: Path | None = None,
) -> Workspace:
    """A fresh clone for task `task_id` on `branch`: from the latest base branch, or from the
    branch itself when an earlier attempt left it in the canonical repo. It is made in
    `workspaces/task-<id>`, or in `into`, an empty folder (a sandbox's own); an earlier
    attempt's checkout is removed either way."""
    if not _BRANCH.fullmatch(branch) or ".." in branch:
        raise WorkspaceError(f"task {task_id}: unusable branch name {branch!r}")
    home = home.resolve()
    canonical = canonical_repo(home, repo_name, repo)
    base = repo.base_branch
    if not _has_ref(canonical, f"refs/heads/{base}"):
        raise WorkspaceError(f"repo {repo_name}: no branch {base!r} in {canonical}")
    resumed = _has_ref(canonical, f"refs/heads/{branch}")
    path = checkout_path(home, task_id)
    _remove_tree(path)  # an earlier attempt's checkout; what it handed back is on the branch
    if into is None:
        private_dir(path.parent)
    else:
        path = into.resolve()
        if not path.is_dir() or any(path.iterdir()):
            raise WorkspaceError(f"task {task_id}: {path} is not an empty folder")

    git("init", "--quiet", f"--initial-branch={branch}", "--", str(path))
    refspecs = [f"+refs/heads/{base}:refs/remotes/origin/{base}"]
    if resumed:
        refspecs.append(f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
    fetch = ("fetch", "--quiet", "--tags", "--no-write-fetch-head")
    git(*fetch, "--", str(canonical), *refspecs, cwd=path)
    base_tip = _rev(path, f"refs/remotes/origin/{base}")
    start = _rev(path, f"refs/remotes/origin/{branch}") if resumed else base_tip
    base_commit = _merge_base(path, base_tip, start) if resumed else base_tip
    git("checkout", "--quiet", "-B", branch, start, cwd=path)
    git("config", "user.name", AGENT_NAME, cwd=path)
    git("config", "user.email", AGENT_EMAIL, cwd=path)
    return Workspace(path=path, branch=branch, base_commit=base_commit, canonical=canonical)


def commit_leftovers(run: Exec, ws: Workspace, message: str) -> None:
    """In the sandbox: commit whatever the agent left uncommitted (on its current HEAD), then
    write the task's branch as a bundle for collect(). The agent's own git setup may run here,
    that is what the sandbox is for; `--no-verify` only keeps a planted pre-commit hook from
    refusing the leftovers."""
    q = shlex.quote
    ref = q(f"refs/heads/{ws.branch}")
    identity = f"-c user.name={q(AGENT_NAME)} -c user.email={q(AGENT_EMAIL)}"
    script = "\n".join(
        [
            f"rm -f .git/index.lock {BUNDLE}",  # a lock left by a command killed at its timeout
            f"git add -A && git {identity} commit --quiet --no-verify -m {q(message)}",
            # Thin when it can be: the canonical repo already has the base commit's parents.
            f"git bundle create --quiet {BUNDLE} {ref} --not {ws.base_commit}^@ 2>/dev/null ||",
            f"git bundle create --quiet {BUNDLE} {ref}",
        ]
    )
    code, output = run(script)
    if code != 0:
        raise WorkspaceError(f"could not hand back branch {ws.branch}: {output.strip()[-2000:]}")


def collect(ws: Workspace) -> Collected:
    """Take the branch handed back by commit_leftovers() into the canonical repo, and measure
    it there against the base commit."""
    ref = f"refs/heads/{ws.branch}"
    with tempfile.TemporaryDirectory(prefix="nightcrew-") as tmp:
        bundle = Path(tmp) / "branch.bundle"
        _copy_out(ws.path, BUNDLE, bundle)
        git(
            *("fetch", "--quiet", "--no-tags", "--no-write-fetch-head"),
            *("--", str(bundle), f"+{ref}:{ref}"),
            cwd=ws.canonical,
            config={"transfer.fsckObjects": "true"},
        )
    return measure(ws.canonical, ws.base_commit, _rev(ws.canonical, ref))


def measure(canonical: Path, base: str, head: str) -> Collected:
    """The change from `base` to `head` in the canonical repo."""
    between = (base, head)
    diff_stat = git("diff", *DIFF_SAFE, "--no-renames", "--stat=100", *between, cwd=canonical)
    numstat = git("diff", *DIFF_SAFE, "--no-renames", "--numstat", "-z", *between, cwd=canonical)
    files, insertions, deletions = _parse_numstat(numstat)
    return Collected(head, diff_stat, files, insertions, deletions)


def checkout_commit(canonical: Path, branch: str, commit: str, *, into: Path) -> Path:
    """A fresh clone holding exactly `commit` (checked out on `branch`) in `into`, an empty
    folder: made on the host from the canonical repo, so nothing of any agent's working
    folder (untracked or ignored files, its index, its git config) comes along. For the
    clean room the checks that count run in (executor/pipeline/job.py)."""
    if not _BRANCH.fullmatch(branch) or ".." in branch:
        raise WorkspaceError(f"unusable branch name {branch!r}")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise WorkspaceError(f"not a commit id: {commit!r}")
    path = into.resolve()
    if not path.is_dir() or any(path.iterdir()):
        raise WorkspaceError(f"{path} is not an empty folder")
    git("init", "--quiet", f"--initial-branch={branch}", "--", str(path))
    fetch = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head")
    git(*fetch, "--", str(canonical), f"+{commit}:refs/nightcrew/proof", cwd=path)
    git("checkout", "--quiet", "-B", branch, commit, cwd=path)
    git("update-ref", "-d", "refs/nightcrew/proof", cwd=path)
    return path


def diff_text(ws: Workspace, head_commit: str) -> str:
    """The task's patch, base to `head_commit`, from the canonical repo. No external diff or
    textconv: the user's converters (say exiftool for images) must not parse agent blobs."""
    return git("diff", *DIFF_SAFE, ws.base_commit, head_commit, cwd=ws.canonical)


def checkout_path(home: Path, task_id: int) -> Path:
    """Where a task's checkout is kept between its runs."""
    return home.resolve() / "workspaces" / f"task-{task_id}"


def keep(ws: Workspace, home: Path, task_id: int) -> Workspace:
    """Move a checkout made in a sandbox's folder to checkout_path(), once its container is
    gone (a container started again would mount the folder by its old name): renamed, or
    copied out of the folder's own filesystem, which is then unmounted. Either way with every
    setuid/setgid bit cleared and the folder private to the host user."""
    dest = checkout_path(home, task_id)
    if ws.path == dest:
        return ws
    _remove_tree(dest)
    try:
        private_dir(dest.parent)
        if quota.is_mounted(ws.path):
            shutil.copytree(
                ws.path, dest, symlinks=True, ignore=_not_plain, copy_function=_copy_plain
            )
            remove(ws.path)
        else:
            os.rename(ws.path, dest)
        _defuse(dest)
        dest.chmod(0o700)
    except (OSError, shutil.Error, subprocess.SubprocessError) as exc:
        raise WorkspaceError(f"cannot move {ws.path} to {dest}: {exc}") from exc
    return replace(ws, path=dest)


def remove(ws: Workspace | Path) -> None:
    """Delete a task's checkout (a Workspace or its path) and the filesystem it may be on; its
    branch stays in the canonical repo."""
    path = ws.path if isinstance(ws, Workspace) else ws
    try:
        quota.release(path)
    except (OSError, subprocess.SubprocessError) as exc:
        raise WorkspaceError(f"cannot unmount {path}: {exc}") from exc
    _remove_tree(path)


def private_dir(path: Path) -> Path:
    """`path` made if missing, and readable by the host user only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _not_plain(folder: str, names: list[str]) -> set[str]:
    """What a copy of a checkout leaves out: FIFOs, sockets, devices (only files, folders
    and symlinks are work)."""
    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def _copy_plain(src: str, dst: str) -> None:
    """Contents and permission bits, without setuid/setgid/sticky (copytree never follows a
    symlink here: it copies links as links)."""
    shutil.copyfile(src, dst, follow_symlinks=False)
    os.chmod(dst, stat.S_IMODE(os.lstat(src).st_mode) & 0o777)


def _defuse(root: Path) -> None:
    """Clear setuid/setgid bits under `root` (folders too), never through a symlink. Only
    for a tree no container can still change."""
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = os.path.join(folder, name) if name else folder
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def read_workspace_file(workspace: Path, relpath: str, max_bytes: int = 64 * 1024) -> str | None:
    """At most `max_bytes` of a regular file inside the workspace, or None when it is missing,
    not a regular file, or reached through a symlink or `..`: a planted
    `AGENTS.md -> ~/.ssh/id_rsa` reads as None, not as the key."""
    try:
        fd = _open_beneath(workspace, relpath)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(max_bytes).decode("utf-8", errors="replace")


def canonical_repo(home: Path, name: str, repo: RepoConfig) -> Path:
    """The host-owned repo that keeps the truth: the user's `path:` repo, or our bare clone of
    a `url:` repo, freshly fetched."""
    if repo.path is not None:
        return repo.path.resolve()
    assert repo.url is not None  # RepoConfig guarantees one of the two
    bare = canonical_path(home, name, repo)
    repos = private_dir(bare.parent)
    with _locked(repos / f"{name}.lock"):
        if bare.exists():
            base = f"refs/heads/{repo.base_branch}"
            git(
                *("fetch", "--quiet", "--no-write-fetch-head", "--", repo.url, f"+{base}:{base}"),
                cwd=bare,
                network=True,
            )
        else:
            partial = repos / f"{name}.git.partial"  # a crash mid-clone leaves no half repo
            _remove_tree(partial)
            git("clone", "--quiet", "--bare", "--", repo.url, str(partial), network=True)
            partial.rename(bare)
    return bare


def canonical_path(home: Path, name: str, repo: RepoConfig) -> Path:
    """Where canonical_repo() keeps the truth, without fetching anything."""
    if repo.path is not None:
        return repo.path.resolve()
    return home.resolve() / "repos" / f"{name}.git"


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _has_ref(repo: Path, ref: str) -> bool:
    try:
        git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=repo)
    except GitError:
        return False
    return True


def _rev(repo: Path, ref: str) -> str:
    return git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=repo)


def _merge_base(repo: Path, a: str, b: str) -> str:
    try:
        return git("merge-base", a, b, cwd=repo)
    except GitError:  # unrelated histories: measure from the base tip
        return a


def _parse_numstat(raw: str) -> tuple[list[str], int, int]:
    """`git diff --numstat -z`: "added TAB deleted TAB path NUL", or for a rename an empty path
    followed by "old NUL new NUL". Binary files count "-" lines."""
    files: list[str] = []
    insertions = deletions = 0
    tokens = iter(raw.split("\0"))
    for token in tokens:
        if not token:
            continue
        added, deleted, path = token.split("\t", 2)
        if not path:
            next(tokens)
            path = next(tokens)
        files.append(path)
        insertions += int(added) if added.isdigit() else 0
        deletions += int(deleted) if deleted.isdigit() else 0
    return files, insertions, deletions


def _open_beneath(root: Path, relpath: str) -> int:
    """A read-only fd for a regular file at `relpath` under `root`, never through a symlink."""
    parts = PurePosixPath(relpath).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise PermissionError(f"{relpath!r} is not a path inside the workspace")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise PermissionError(f"{relpath!r} is not a regular file")
    return file_fd


def _copy_out(root: Path, relpath: str, dest: Path) -> None:
    try:
        fd = _open_beneath(root, relpath)
    except OSError as exc:
        raise WorkspaceError(
            f"nothing handed back: cannot open {relpath} in {root} ({exc.strerror or exc}); "
            "commit_leftovers() writes it"
        ) from exc
    copied = 0
    with os.fdopen(fd, "rb") as src, dest.open("xb") as out:
        while chunk := src.read(1024 * 1024):
            copied += len(chunk)
            if copied > MAX_BUNDLE_BYTES:
                raise WorkspaceError(f"{relpath} in {root} is over {MAX_BUNDLE_BYTES} bytes")
            out.write(chunk)


def _remove_tree(path: Path) -> None:
    """`rm -rf path` that never follows a symlink and copes with read-only directories."""
    try:
        parent = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _remove_entry(parent, path.name)
    except FileNotFoundError:
        pass
    except (OSError, RecursionError) as exc:
        raise WorkspaceError(f"cannot remove {path}: {exc}") from exc
    finally:
        os.close(parent)


def _remove_entry(parent_fd: int, name: str) -> None:
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        with suppress(OSError):  # not ours to chmod: the unlinks below say whether it matters
            os.fchmod(fd, 0o700)
        for entry in os.listdir(fd):
            _remove_entry(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
