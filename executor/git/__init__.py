"""Git on the host: hardened git calls (safe: hooks off, no symlinks followed out), per-task
clones and the bundle hand-back (workspace), and the merge plumbing on the canonical repository
(merge: commit-tree per policy, compare-and-swap ref updates, push). Imports `config`."""
