"""A throwaway git repo with one commit on main, for the benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("bench\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), *ident, "commit", "-qm", "init"], check=True)
    return repo
