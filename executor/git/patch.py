"""A task's full patch, for people to read (`nightcrew diff`) and for `git apply`.

Read from the canonical repo (where the task's branch lives) with the hardened host git:
no external diff, no textconv, binary changes as `--binary` hunks, as bytes: they apply as
they are printed (CRs and any encoding kept). It is the agent's text: a front end that shows
it on a terminal must drop control characters first (bot/terminal/diff.py)."""

from __future__ import annotations

from pathlib import Path

from executor.git.safe import GitError, git, git_bytes
from executor.git.workspace import DIFF_SAFE

__all__ = ["GitError", "task_patch"]


def task_patch(canonical: Path, base_branch: str, head: str, *, landed_from: str | None) -> bytes:
    """The task's change as a patch. `landed_from`: for a merged task, the base commit it
    started from (its change as made); otherwise the patch is taken from where the branch
    meets the base branch now, so it applies to the base branch's tip when nothing else
    changed the same lines since."""
    if landed_from is not None:
        start = landed_from
    else:
        try:
            start = git("merge-base", f"refs/heads/{base_branch}", head, cwd=canonical)
        except GitError:  # unrelated histories, or no base branch: the whole head
            start = git("hash-object", "-t", "tree", "/dev/null", cwd=canonical)
    return git_bytes("diff", *DIFF_SAFE, "--binary", "--no-renames", start, head, cwd=canonical)
