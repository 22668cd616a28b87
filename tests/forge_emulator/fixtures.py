"""`forge`: a local bare remote of the test project (`origin`), a GitHub or a GitLab emulator
serving it, the token in the environment, and the repo options of a `pull_request` repo
pointing at them. Parametrised over both forges; `forge_kind` picks one for a test.
Registered in the root conftest.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.forge_emulator.github import GitHubEmulator
from tests.forge_emulator.gitlab import GitLabEmulator

TOKEN_ENV = {"github": "GITHUB_TOKEN", "gitlab": "GITLAB_TOKEN"}


@dataclass
class ForgeSetup:
    kind: str
    emulator: GitHubEmulator | GitLabEmulator
    remote: Path
    token: str

    def options(self, **merge: Any) -> dict[str, Any]:
        """A `pull_request` repo's options for make_worker(repo_options=...)."""
        return {
            "merge": {
                "policy": "pull_request",
                "forge": self.kind,
                "project": self.emulator.project,
                "api_url": self.emulator.api_url,
                **merge,
            },
        }

    def pr(self, n: int = 1) -> dict[str, Any]:
        emu = self.emulator
        return emu.prs[n] if isinstance(emu, GitHubEmulator) else emu.mrs[n]

    def body(self, n: int = 1) -> str:
        raw = self.pr(n)
        return str(raw.get("body") if self.kind == "github" else raw.get("description"))

    def merged(self, n: int = 1) -> bool:
        raw = self.pr(n)
        return bool(raw.get("merged")) if self.kind == "github" else raw["state"] == "merged"

    def block_merges(self, on: bool) -> None:
        """The forge's branch protection: a required check that has not reported."""
        if isinstance(self.emulator, GitHubEmulator):
            self.emulator.pending_check = "ci" if on else None
        else:
            self.emulator.pipeline_running = on


@pytest.fixture(params=["github", "gitlab"])
def forge_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def forge(
    forge_kind: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ForgeSetup]:
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(remote))
    git(project, "remote", "add", "origin", str(remote))
    prefix = "ghp_" if forge_kind == "github" else "glpat-"
    token = prefix + secrets.token_hex(16)
    monkeypatch.setenv(TOKEN_ENV[forge_kind], token)
    kind = GitHubEmulator if forge_kind == "github" else GitLabEmulator
    with kind(remote, token=token) as emulator:
        yield ForgeSetup(forge_kind, emulator, remote, token)
