"""A repo's forge from its config and the host's environment; and issue URLs matched to the
configured repos (pure)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from executor.config.schema import Config, RepoConfig
from executor.forge.base import Forge


class NoToken(Exception):
    """The token's environment variable is not set."""


def forge_for(repo: RepoConfig, environ: Mapping[str, str] | None = None) -> Forge:
    merge = repo.merge
    assert merge.policy == "pull_request" and merge.forge and merge.project
    token = (os.environ if environ is None else environ).get(merge.forge_token_env)
    if not token:
        raise NoToken(f"{merge.forge_token_env} is not set: the {merge.forge} token")
    # Here, not at the top: every CLI command imports this module (issue URLs), and the
    # clients bring httpx, a good part of a command's start-up time.
    from executor.forge.github import GitHub
    from executor.forge.gitlab import GitLab

    kind = GitHub if merge.forge == "github" else GitLab
    return kind(merge.forge_api, merge.project, token)


@dataclass(frozen=True)
class IssueRef:
    repo: str  # the configured repo's name
    number: int
    url: str


# https://github.com/owner/repo/issues/12 ; https://gitlab.com/group/sub/proj/-/issues/12
_GITHUB = re.compile(r"/(?P<project>[^/]+/[^/]+)/issues/(?P<n>\d+)/?")
_GITLAB = re.compile(r"/(?P<project>[^/]+(?:/[^/]+)+)/-/issues/(?P<n>\d+)/?")


def web_host(repo: RepoConfig) -> str:
    """The forge's web host: api.github.com serves github.com; otherwise the API's host."""
    host = urlsplit(repo.merge.forge_api).netloc.lower()
    return "github.com" if host == "api.github.com" else host


def match_issue(config: Config, text: str) -> IssueRef | None:
    """`text` is an issue URL of a configured `pull_request` repo: which repo and issue."""
    text = text.strip()
    if not re.fullmatch(r"https?://\S+", text):
        return None
    parts = urlsplit(text)
    for name, repo in config.repos.items():
        if repo.merge.policy != "pull_request" or parts.netloc.lower() != web_host(repo):
            continue
        pattern = _GITHUB if repo.merge.forge == "github" else _GITLAB
        found = pattern.fullmatch(parts.path)
        if found and found["project"].lower() == (repo.merge.project or "").lower():
            return IssueRef(name, int(found["n"]), text)
    return None


def looks_like_issue_url(text: str) -> bool:
    path = urlsplit(text.strip()).path
    return bool(re.fullmatch(r"https?://\S+", text.strip())) and bool(
        _GITHUB.fullmatch(path) or _GITLAB.fullmatch(path)
    )
