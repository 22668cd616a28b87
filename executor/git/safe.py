"""Host-side git, hardened: every git command the host runs goes through `git()`.

The host runs git only in repos it owns (the canonical repo, a workspace before the agent
has touched it) or on data it has checked (a bundle copied out of a workspace). The
hardening here is the second line: it stops the *content* (trees, `.gitattributes`, objects)
and the user's own setup from running anything on the way.

- No hooks, ever: `core.hooksPath=/dev/null`, also for the user's own repo (their hooks are
  not meant to fire for our fetches).
- No system or global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`): a user's
  `filter.lfs.*` or `diff.*.textconv` would otherwise run on agent-written files as soon as a
  committed `.gitattributes` selects them. The one exception is `network=True`, for talking to
  a repo's configured URL: that needs the user's credentials, proxies and `insteadOf`, and
  touches no agent-written data.
- Only the transports we need (`GIT_ALLOW_PROTOCOL` overrides any `protocol.*` config): a
  `file`-only host call cannot be turned into `ext::` or ssh by anything it reads.
- No credentials in what it says: a repo URL may carry them (`https://user:token@host/...`),
  and both our command line and git's own words can echo it. Every GitError's text goes
  through `executor.config.redact` here, at the one place it is made, so task reasons, events,
  logs and Slack never see them.
- No inherited `GIT_*` variables (a stray `GIT_DIR` or `GIT_CONFIG_PARAMETERS` from the
  parent process must not redirect us), no prompts (`GIT_TERMINAL_PROMPT=0`, no controlling
  terminal for ssh), stdin closed.

Note `-c` options do not reach the far side of a local fetch: git strips
`GIT_CONFIG_PARAMETERS` before it starts `git-upload-pack` in the source repo. That is why the
host never fetches from an agent-writable repo (see executor/git/workspace.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from executor.config.redact import redact

LOCAL_PROTOCOLS = "file"
NETWORK_PROTOCOLS = "file:git:http:https:ssh"  # never ext:: or fd::
NETWORK_TIMEOUT_S = 900.0  # a first clone of a big repo is slow; a hung server must not be

ALWAYS = {
    "core.hooksPath": os.devnull,
    "core.fsmonitor": "false",
    "submodule.recurse": "false",
    "fetch.recurseSubmodules": "false",
}


class GitError(Exception):
    """A git command failed; the message has the command and git's own words."""


def git(
    *args: str,
    cwd: Path | None = None,
    config: Mapping[str, str] | None = None,
    network: bool = False,
    timeout: float | None = None,
) -> str:
    """Run `git <args>` with the hardening above and return its stdout (stripped)."""
    code, out, err = git_status(*args, cwd=cwd, config=config, network=network, timeout=timeout)
    if code != 0:
        raise GitError(redact(f"git {' '.join(args)} (in {cwd or '.'}): {err or out}"))
    return out


def git_status(
    *args: str,
    cwd: Path | None = None,
    config: Mapping[str, str] | None = None,
    network: bool = False,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """As git(), for commands whose exit code is an answer (`merge-tree`: 1 = conflicts):
    exit code, stdout and stderr (stripped)."""
    options = {**ALWAYS, **(config or {})}
    cmd = ["git"]
    for key, value in options.items():
        cmd += ["-c", f"{key}={value}"]
    cmd += args
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=_env(network),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout or (NETWORK_TIMEOUT_S if network else None),
            start_new_session=True,  # no controlling terminal: ssh cannot prompt on it
        )
    except subprocess.TimeoutExpired as exc:
        # from None: the TimeoutExpired's own text holds the command line, URL included.
        said = f"git {' '.join(args)}: timed out after {exc.timeout:.0f} s"
        raise GitError(redact(said)) from None
    return result.returncode, result.stdout.strip(), (result.stderr or "").strip()


def git_bytes(*args: str, cwd: Path | None = None) -> bytes:
    """As git() on local repos, with stdout exactly as git wrote it: a patch keeps its CRs,
    its last blank context line and files in any encoding (text mode would lose them)."""
    cmd = ["git"]
    for key, value in ALWAYS.items():
        cmd += ["-c", f"{key}={value}"]
    result = subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env=_env(False),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
    )
    if result.returncode != 0:
        said = result.stderr.decode("utf-8", "replace").strip()
        raise GitError(redact(f"git {' '.join(args)} (in {cwd or '.'}): {said}"))
    return result.stdout


def _env(network: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_ALLOW_PROTOCOL"] = NETWORK_PROTOCOLS if network else LOCAL_PROTOCOLS
    if not network:
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        env["GIT_CONFIG_GLOBAL"] = os.devnull
    return env
