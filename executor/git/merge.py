"""Merging an approved task's branch into its base, on the host-owned canonical repo.

Everything here is git plumbing on the canonical repo (never on an agent-written clone). What
a merge did is never read back from the repository's text: commit messages, trailers and
identities are the agent's to write (its own commits, its summary quoted in ours). The job
records the commit it is about to put on the base in the database before any ref moves
(executor/pipeline/merging.py); a crash at any point either left the base without that
commit or with it, and the compare-and-swap ref update means a task is never merged twice.
The `Nightcrew-Task` trailer stays in our commits for people, not for bookkeeping."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

from executor.git.commit_text import compose
from executor.git.safe import GitError, git, git_status

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


def tree(repo: Path, commit: str) -> str:
    return git("rev-parse", f"{commit}^{{tree}}", cwd=repo)


def merged_tree(repo: Path, onto: str, commit: str) -> tuple[str, bool]:
    """The tree git's own three-way merge makes of `commit` onto `onto`, and whether it was
    clean; with conflicts the tree holds the conflict markers. A clean rebase of `commit`
    onto `onto` ends in this tree; anything else changed the tree beyond the rebase."""
    code, out, err = git_status(
        "merge-tree", "--write-tree", "--no-messages", onto, commit, cwd=repo
    )
    if code not in (0, 1) or not out:
        raise GitError(f"git merge-tree {onto} {commit} (in {repo}): {err or out}")
    return out.splitlines()[0], code == 0


def interdiff(repo: Path, old: str, new: str, *, max_chars: int = 20_000) -> tuple[str, str]:
    """What differs between two trees (commits or trees): (diff stat, patch cut at
    `max_chars`). No external diff or textconv: the blobs are agent-written."""
    safe = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-renames")
    stat = git("diff", *safe, "--stat=100", old, new, cwd=repo)
    patch = git("diff", *safe, old, new, cwd=repo)
    if len(patch) > max_chars:
        patch = patch[:max_chars] + f"\n… ({len(patch) - max_chars} more characters)"
    return stat, patch


def patch(repo: Path, old: str, new: str, *, max_chars: int) -> tuple[str, int]:
    """The whole patch from `old` to `new` for people to read (the thread's diff file, the
    task page): (patch cut at `max_chars`, characters cut). Same safety as `interdiff`."""
    safe = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-renames")
    text = git("diff", *safe, old, new, cwd=repo)
    if len(text) <= max_chars:
        return text, 0
    return text[:max_chars], len(text) - max_chars


def remote_has(repo: Path, *, remote: str, base: str, commit: str) -> bool:
    """Whether `remote`'s `base` already contains `commit` (as far as the objects we have
    tell: a tip we do not know counts as not containing it)."""
    try:
        listed = git("ls-remote", "--", remote, f"refs/heads/{base}", cwd=repo, network=True)
    except GitError:
        return False
    tip = listed.split()[0] if listed else ""
    return bool(tip) and has_ref(repo, tip) and is_ancestor(repo, commit, tip)


def message(*, task_id: int, prompt: str, summary: str | None, approved_by: str | None) -> str:
    """The merge or squash commit's message: the task's title, the agent's summary, the task
    id and who approved it (commit_text.compose; control characters dropped)."""
    return compose(task_id, prompt, summary, {"Approved-by": approved_by} if approved_by else None)


def make_commit(repo: Path, *, base_tip: str, head: str, policy: Policy, text: str) -> str:
    """The commit the base will point at. `head` must already contain `base_tip`."""
    if policy == "ff":
        return head
    tree = git("rev-parse", f"{head}^{{tree}}", cwd=repo)
    parents = ["-p", base_tip, *(["-p", head] if policy == "merge" else [])]
    return git("commit-tree", tree, *parents, "-m", text, cwd=repo, config=IDENTITY)


class LocalChanges(GitError):
    """The base is checked out with local edits a fast-forward would overwrite: a person's
    to settle, not a failure of the merge."""


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
            raise LocalChanges(
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


def push_branch(repo: Path, *, url_or_remote: str, branch: str, commit: str) -> None:
    """Put exactly `commit` on the task's branch at the remote (a pull request's head). The
    branch is nightcrew's own: forced, so a revision after a rebase still goes up."""
    ref = f"{commit}:refs/heads/{branch}"
    git("push", "--quiet", "--force", "--", url_or_remote, ref, cwd=repo, network=True)
