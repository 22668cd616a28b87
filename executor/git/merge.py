"""Merging an approved task's branch into its base, on the host-owned canonical repo.

Everything here is git plumbing on the canonical repo (never on an agent-written clone). A
merge is made idempotent by a trailer, `Nightcrew-Task: <id>`, in every commit it creates,
and by a compare-and-swap ref update: a crash at any point either left the base untouched
or left a commit we find again, so a task is never merged twice."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

from executor.git.safe import GitError, git

TRAILER = "Nightcrew-Task"
IDENTITY = {"user.name": "nightcrew", "user.email": "nightcrew@nightcrew.invalid"}
Policy = Literal["merge", "squash", "ff"]


class BaseMoved(Exception):
    """The base branch changed between reading and updating it; merge again."""


def rev(repo: Path, ref: str) -> str:
    return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=repo)


def has_ref(repo: Path, ref: str) -> bool:
    try:
        rev(repo, ref)
    except GitError:
        return False
    return True


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    try:
        git("merge-base", "--is-ancestor", older, newer, cwd=repo)
    except GitError:
        return False
    return True


def touched_files(repo: Path, old: str, new: str) -> list[str]:
    """Every path any commit in `old..new` touched, both sides of a rename: with the merge and
    ff policies each commit lands in the base's history, so a file added and removed again
    still reaches it."""
    out = git(
        "log",
        "--no-renames",
        "--no-ext-diff",
        "--format=",
        "--name-only",
        "-z",
        f"{old}..{new}",
        cwd=repo,
    )
    return sorted({name.strip() for name in out.split("\0") if name.strip()})


def already_merged(
    repo: Path, *, base: str, task_id: int, head: str | None, base_commit: str | None
) -> str | None:
    """The commit that merged task `task_id` into `base`, if an earlier attempt got that far:
    one of our commits on the base's first-parent line since the task started (an agent's
    own commit message, or an older installation's, must not count)."""
    since = f"{base_commit}..refs/heads/{base}" if base_commit else f"refs/heads/{base}"
    found = git(
        "log",
        "-n1",
        "--first-parent",
        "--format=%H",
        f"--grep=^{TRAILER}: {task_id}$",
        f"--committer={IDENTITY['user.email']}",
        since,
        cwd=repo,
    )
    if found:
        return found
    has_work = head and base_commit and head != base_commit
    if has_work and is_ancestor(repo, head, f"refs/heads/{base}"):  # fast-forwarded
        return head
    return None


def message(*, task_id: int, prompt: str, summary: str | None, approved_by: str | None) -> str:
    title = " ".join(prompt.split())[:72] or f"task {task_id}"
    body = (summary or "").strip()
    trailers = f"{TRAILER}: {task_id}" + (f"\nApproved-by: {approved_by}" if approved_by else "")
    return f"{title}\n\n{body}\n\n{trailers}\n" if body else f"{title}\n\n{trailers}\n"


def make_commit(repo: Path, *, base_tip: str, head: str, policy: Policy, text: str) -> str:
    """The commit the base will point at. `head` must already contain `base_tip`."""
    if policy == "ff":
        return head
    tree = git("rev-parse", f"{head}^{{tree}}", cwd=repo)
    parents = ["-p", base_tip, *(["-p", head] if policy == "merge" else [])]
    return git("commit-tree", tree, *parents, "-m", text, cwd=repo, config=IDENTITY)


def advance_base(repo: Path, *, base: str, new: str, old: str) -> None:
    """Point `base` at `new` if it still points at `old`. When the user has `base` checked out
    in this (non-bare) repo, fast-forward their working tree too, so it does not silently
    show our changes reverted; git refuses if that would overwrite their local edits."""
    ref = f"refs/heads/{base}"
    if rev(repo, ref) != old:
        raise BaseMoved(f"{base} moved while merging")
    if _checked_out(repo, ref):
        try:
            git("merge", "--ff-only", "--quiet", new, cwd=repo)
        except GitError as exc:
            if rev(repo, ref) != old:
                raise BaseMoved(f"{base} moved while merging") from exc
            raise GitError(
                f"{base} is checked out in {repo} and could not be fast-forwarded there "
                f"(commit or stash your local changes, then approve again): {exc}"
            ) from exc
        return
    try:
        git("update-ref", ref, new, old, cwd=repo)
    except GitError as exc:
        raise BaseMoved(str(exc)) from exc


def push(repo: Path, *, url_or_remote: str, base: str, new: str) -> None:
    git("push", "--quiet", "--", url_or_remote, f"{new}:refs/heads/{base}", cwd=repo, network=True)


def remote_of(repo: Path) -> str | None:
    """The `origin` a `path:` repo pushes to, if it has one."""
    try:
        return git("remote", "get-url", "origin", cwd=repo) or None
    except GitError:
        return None


def delete_branch(repo: Path, branch: str) -> bool:
    """Delete the task branch unless someone has it checked out here (they are looking at
    it); True if deleted."""
    ref = f"refs/heads/{branch}"
    if _checked_out(repo, ref):
        return False
    git("update-ref", "-d", ref, cwd=repo)
    return True


def _checked_out(repo: Path, ref: str) -> bool:
    if git("rev-parse", "--is-bare-repository", cwd=repo) == "true":
        return False
    try:
        return git("symbolic-ref", "-q", "HEAD", cwd=repo) == ref
    except (GitError, subprocess.SubprocessError):
        return False
